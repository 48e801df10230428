//! The deployment files, checked with the real tools: `nginx -t` on the reverse proxy's
//! configuration, `promtool` on Prometheus's configuration and alert rules (with unit tests of
//! the rules). Each check is also shown to fail on a broken copy, so it cannot pass vacuously.
//! The tools come from Debian (`infra/scripts/services.sh` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("infra/deploy")
        .join(path)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/herald-test/deploy")
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a tool: whether it succeeded, and what it printed.
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| {
            panic!("{program} is not installed ({err}): run infra/scripts/services.sh")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn nginx() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// `nginx -t` of `config` under a prefix holding a self-signed certificate.
fn nginx_test(config: &str) -> (bool, String) {
    let dir = scratch("nginx");
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let (made, text) = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=herald.test",
            "-keyout",
            dir.join("certs/herald.key").to_str().unwrap(),
            "-out",
            dir.join("certs/herald.crt").to_str().unwrap(),
        ],
    );
    assert!(made, "openssl: {text}");
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let prefix = format!("{}/", dir.display());
    let conf = dir.join("nginx.conf");
    let pid = format!("pid {};", dir.join("nginx.pid").display());
    run(
        nginx(),
        &[
            "-t",
            "-p",
            &prefix,
            "-c",
            conf.to_str().unwrap(),
            "-g",
            &pid,
        ],
    )
}

#[test]
fn the_reverse_proxy_configuration_passes_nginx_t() {
    let config = std::fs::read_to_string(deploy("nginx/nginx.conf")).unwrap();
    let (ok, text) = nginx_test(&config);
    assert!(ok && text.contains("test is successful"), "{text}");

    // What the configuration promises, so an edit cannot drop it unnoticed.
    for needle in [
        "return 308 https://",
        "listen 443 ssl",
        "client_max_body_size",
        "limit_req_zone",
        "Strict-Transport-Security",
        "X-Content-Type-Options nosniff",
        "location = /metrics { return 404; }",
        "proxy_pass $ingress",
        "proxy_pass $auth",
        "proxy_buffering off",
    ] {
        assert!(config.contains(needle), "nginx.conf lost {needle:?}");
    }

    // The check is real: a broken copy fails it.
    let broken = config.replace("client_max_body_size 2m;", "client_max_body_size 2m");
    let (ok, text) = nginx_test(&broken);
    assert!(!ok, "a broken configuration passed: {text}");
}

#[test]
fn prometheus_configuration_and_alert_rules_pass_promtool_and_their_unit_tests() {
    let (ok, text) = run(
        "promtool",
        &[
            "check",
            "config",
            deploy("prometheus/prometheus.yml").to_str().unwrap(),
        ],
    );
    assert!(ok && text.contains("4 rules found"), "{text}");
    let (ok, text) = run(
        "promtool",
        &[
            "test",
            "rules",
            deploy("prometheus/alerts_test.yml").to_str().unwrap(),
        ],
    );
    assert!(ok && text.contains("SUCCESS"), "{text}");

    // A rule that does not parse fails the check.
    let dir = scratch("prometheus");
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let broken = rules.replace("> 300", "> > 300");
    std::fs::write(dir.join("alerts.yml"), broken).unwrap();
    let (ok, text) = run(
        "promtool",
        &["check", "rules", dir.join("alerts.yml").to_str().unwrap()],
    );
    assert!(!ok, "a broken rule passed: {text}");
}

/// Validates compose text against the Compose specification's JSON schema (fetched by
/// `infra/scripts/services.sh`); the error message when it does not fit.
fn compose_check(text: &str) -> (bool, String) {
    let schema = std::env::var("HOME")
        .map(|home| PathBuf::from(home).join(".cache/herald/compose_spec.json"))
        .unwrap();
    assert!(
        schema.exists(),
        "{} is missing: run infra/scripts/services.sh",
        schema.display()
    );
    let dir = scratch("compose");
    std::fs::write(dir.join("docker-compose.yml"), text).unwrap();
    let script = "import json, sys, yaml, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        doc = yaml.safe_load(open(sys.argv[2]))\n\
        try:\n    jsonschema.validate(doc, schema)\n\
        except jsonschema.ValidationError as err:\n    \
        sys.exit(f\"{'/'.join(map(str, err.absolute_path))}: {err.message}\")\n\
        print('valid')\n";
    run(
        "python3",
        &[
            "-c",
            script,
            schema.to_str().unwrap(),
            dir.join("docker-compose.yml").to_str().unwrap(),
        ],
    )
}

#[test]
fn docker_compose_fits_the_compose_specification_and_publishes_only_the_proxy() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .unwrap();
    let (ok, out) = compose_check(&text);
    assert!(ok && out.contains("valid"), "{out}");

    // Only nginx publishes ports to the world; operator UIs are bound to loopback.
    let mut service = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with(' ')
        {
            service = name.to_string();
        }
        if let Some(ports) = line.trim().strip_prefix("ports:") {
            for port in ports.trim_matches(|c| " []".contains(c)).split(',') {
                let port = port.trim().trim_matches('"');
                assert!(
                    service == "nginx" || port.starts_with("127.0.0.1:"),
                    "{service} publishes {port} beyond loopback"
                );
            }
        }
    }

    let broken = text.replacen("deploy: {replicas: 2}", "deploy: {replicas: two}", 1);
    let (ok, out) = compose_check(&broken);
    assert!(
        !ok && out.contains("replicas"),
        "a broken file passed: {out}"
    );
}

#[test]
fn every_variable_compose_reads_is_documented_in_env_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let example = std::fs::read_to_string(root.join(".env.example")).unwrap();
    let mut variables: Vec<&str> = compose
        .split("${")
        .skip(1)
        .filter_map(|rest| rest.split([':', '}', '-']).next())
        .collect();
    variables.sort_unstable();
    variables.dedup();
    assert!(variables.contains(&"POSTGRES_PASSWORD"), "{variables:?}");
    for variable in variables {
        assert!(
            example
                .lines()
                .any(|l| l.starts_with(&format!("{variable}="))),
            "{variable} is read by docker-compose.yml but not in .env.example"
        );
    }
}

/// Secrets mounted as files: `NAME_FILE` instead of `NAME`, for every setting of every service.
#[test]
fn secrets_come_from_files_and_never_show_in_help() {
    let dir = scratch("secrets");
    let secret = "mounted-secret-of-at-least-thirty-two-bytes";
    let file = dir.join("jwt");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let herald = |args: &[&str], env: &[(&str, &Path)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command.args(args).env_remove("JWT_HS256_SECRET");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let from_file = [("JWT_HS256_SECRET_FILE", file.as_path())];
    let token = herald(&["token", "--sub", "alice", "--role", "user"], &from_file);
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["herald"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("signed with the file's secret, without its newline");
    assert_eq!(claims.claims["sub"], "alice");

    for service in ["token", "ingress", "notifications", "auth"] {
        let help = herald(&[service, "--help"], &from_file);
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(help.status.success() && !text.contains(secret), "{text}");
    }
    let missing = herald(
        &["token", "--sub", "alice"],
        &[("JWT_HS256_SECRET_FILE", &dir.join("absent"))],
    );
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(err.contains("JWT_HS256_SECRET_FILE: cannot read"), "{err}");
}

/// Validates manifests with `tests/support/validate_k8s.py` (Kubernetes 1.33 schemas, strict;
/// KEDA's CRD for ScaledObjects): whether they passed, and what it printed.
fn k8s_check(manifests: &[PathBuf]) -> (bool, String) {
    let crds = std::env::var("HOME")
        .map(|home| PathBuf::from(home).join(".cache/herald/keda-v2.21.0"))
        .unwrap();
    assert!(
        crds.join("keda.sh_scaledobjects.yaml").exists(),
        "{} is missing: run infra/scripts/services.sh",
        crds.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/validate_k8s.py");
    let mut args = vec![
        script.to_str().unwrap().to_string(),
        "1.33".to_string(),
        crds.to_str().unwrap().to_string(),
    ];
    args.extend(manifests.iter().map(|m| m.to_str().unwrap().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("python3", &args)
}

#[test]
fn kubernetes_manifests_fit_their_schemas_and_keda_scales_every_consumer_group() {
    let dir = deploy("k8s");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    let (ok, out) = k8s_check(&manifests);
    assert!(ok, "{out}");
    let objects: usize = out
        .lines()
        .last()
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap();
    assert!(objects >= 18, "{out}");

    // kustomize applies every manifest of the folder.
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    for manifest in &manifests {
        let name = manifest.file_name().unwrap().to_str().unwrap();
        assert!(
            name == "kustomization.yaml" || kustomization.contains(&format!("- {name}")),
            "{name} is not in kustomization.yaml"
        );
    }
    // Each lag-scaled consumer's ScaledObject names its own group and Deployment; every
    // pod is probed.
    let all: String = manifests
        .iter()
        .map(|m| std::fs::read_to_string(m).unwrap())
        .collect();
    for group in ["audit-log", "notifications", "reports"] {
        let manifest = std::fs::read_to_string(dir.join(format!("{group}.yaml"))).unwrap();
        assert!(manifest.contains("kind: ScaledObject"), "{group}");
        assert!(
            manifest.contains(&format!("consumerGroup: {group}\n")),
            "{group}"
        );
        assert!(
            manifest.contains(&format!("scaleTargetRef: {{name: {group}}}")),
            "{group}"
        );
    }
    assert_eq!(
        all.matches("livenessProbe:").count(),
        all.matches("\nkind: Deployment\n").count() + all.matches("\nkind: StatefulSet\n").count()
    );

    // A broken copy fails, naming the field.
    let broken = scratch("k8s").join("reports.yaml");
    let text = std::fs::read_to_string(dir.join("reports.yaml")).unwrap();
    std::fs::write(
        &broken,
        text.replacen("minReplicaCount: 1", "minReplicaCount: one", 1)
            .replacen("periodSeconds: 5", "periodSecond: 5", 1),
    )
    .unwrap();
    let (ok, out) = k8s_check(&[broken]);
    assert!(!ok, "a broken manifest passed: {out}");
    assert!(
        out.contains("spec.minReplicaCount: 'one' is not of type 'integer'"),
        "{out}"
    );
    assert!(out.contains("'periodSecond' was unexpected"), "{out}");
}

/// Two network namespaces joined by a veth pair: a host (10.213.0.1) and a client from outside
/// (10.213.0.2). Removed when dropped.
struct Hosts {
    host: String,
    client: String,
}

impl Hosts {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let hosts = Self {
            host: format!("herald-fw-{id}-host"),
            client: format!("herald-fw-{id}-client"),
        };
        let ip = |args: &str| {
            let (ok, out) = run("ip", &args.split(' ').collect::<Vec<_>>());
            assert!(ok, "ip {args}: {out}");
        };
        let (host, client) = (&hosts.host, &hosts.client);
        ip(&format!("netns add {host}"));
        ip(&format!("netns add {client}"));
        ip(&format!(
            "link add hfw{id}h netns {host} type veth peer name hfw{id}c netns {client}"
        ));
        ip(&format!("-n {host} addr add 10.213.0.1/30 dev hfw{id}h"));
        ip(&format!("-n {client} addr add 10.213.0.2/30 dev hfw{id}c"));
        for (ns, dev) in [(host, format!("hfw{id}h")), (client, format!("hfw{id}c"))] {
            ip(&format!("-n {ns} link set {dev} up"));
            ip(&format!("-n {ns} link set lo up"));
        }
        hosts
    }

    /// The ports of `ports` the client can connect to while the host listens on all of them.
    fn reachable(&self, ports: &[u16]) -> Vec<u16> {
        let list = format!("{ports:?}");
        let listen = format!(
            "import socket, time\n\
             socks = []\n\
             for port in {list}:\n    \
                 s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n    \
                 s.bind(('10.213.0.1', port)); s.listen(); socks.append(s)\n\
             print('ready', flush=True)\n\
             time.sleep(30)\n"
        );
        let mut listener = Command::new("ip")
            .args(["netns", "exec", &self.host, "python3", "-c", &listen])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(listener.stdout.as_mut().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready.trim(), "ready");
        let probe = format!(
            "import socket\n\
             for port in {list}:\n    \
                 s = socket.socket(); s.settimeout(1)\n    \
                 try:\n        s.connect(('10.213.0.1', port)); print(port)\n    \
                 except OSError:\n        pass\n"
        );
        let (ok, out) = run(
            "ip",
            &["netns", "exec", &self.client, "python3", "-c", &probe],
        );
        let _ = listener.kill();
        let _ = listener.wait();
        assert!(ok, "{out}");
        out.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.host]);
        let _ = run("ip", &["netns", "del", &self.client]);
    }
}

/// The host firewall, loaded for real in a network namespace of its own: from outside, only
/// 22, 80 and 443 answer, and loading it twice changes nothing.
#[test]
fn the_host_firewall_admits_only_ssh_http_and_https() {
    let script = deploy("firewall/apply.sh");
    let (ok, out) = run("bash", &[script.to_str().unwrap(), "--check"]);
    assert!(ok, "{out}");

    let hosts = Hosts::new();
    let ports = [22, 80, 443, 5432, 6379, 8080, 9092];
    assert_eq!(
        hosts.reachable(&ports),
        ports,
        "without the firewall all answer"
    );
    for _ in 0..2 {
        let (ok, out) = run(
            "ip",
            &[
                "netns",
                "exec",
                &hosts.host,
                "bash",
                script.to_str().unwrap(),
            ],
        );
        assert!(ok, "{out}");
        assert_eq!(hosts.reachable(&ports), [22, 80, 443]);
    }

    // A broken copy is refused by the check, naming the line.
    let broken = scratch("firewall");
    std::fs::copy(&script, broken.join("apply.sh")).unwrap();
    let rules = std::fs::read_to_string(deploy("firewall/herald.nft")).unwrap();
    std::fs::write(
        broken.join("herald.nft"),
        rules.replacen(
            "tcp dport { 80, 443 } accept",
            "tcp dport { 80, 443 } acept",
            1,
        ),
    )
    .unwrap();
    let (ok, out) = run(
        "bash",
        &[broken.join("apply.sh").to_str().unwrap(), "--check"],
    );
    assert!(!ok && out.contains("herald.nft:"), "{out}");
}

/// The `herald_*` metric names a PromQL text uses, without histogram suffixes.
fn herald_metrics(promql: &str) -> Vec<String> {
    let mut names: Vec<String> = promql
        .match_indices("herald_")
        .map(|(at, _)| {
            promql[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .map(|name| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .map_or(name.clone(), str::to_string)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Every Rust source of the services, concatenated: where metric names are defined.
fn sources() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = String::new();
    let mut dirs: Vec<PathBuf> = ["infra", "producers", "consumers", "src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    text
}

/// `promtool check rules` on the expressions, each as a recording rule.
fn promql_check(exprs: &[String]) -> (bool, String) {
    let dir = scratch("promql");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: panel_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let file = dir.join("panels.yml");
    std::fs::write(&file, rules).unwrap();
    run("promtool", &["check", "rules", file.to_str().unwrap()])
}

#[test]
fn the_dashboard_and_the_alerts_query_only_metrics_herald_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/dashboards/herald.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().clone())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let (ok, out) = promql_check(&exprs);
    assert!(ok, "{out}");
    let mut broken = exprs.clone();
    broken[0] = broken[0].replacen(')', "", 1);
    let (ok, out) = promql_check(&broken);
    assert!(!ok, "a broken expression passed: {out}");

    // A misspelt metric would draw an empty panel or never fire: each name is one the code
    // registers.
    let code = sources();
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let used = herald_metrics(&format!("{}\n{alerts}", exprs.join("\n")));
    assert!(used.len() >= 10, "{used:?}");
    for name in &used {
        assert!(
            code.contains(&format!("\"{name}\"")),
            "{name} is queried but no service exports it"
        );
    }
    assert_eq!(
        herald_metrics("rate(herald_missing_total[5m])"),
        ["herald_missing_total"]
    );
    assert!(!code.contains("\"herald_missing_total\""));

    // Provisioning: the panels' data source is the provisioned one, and the dashboards folder
    // is where docker-compose.yml mounts it.
    let datasource =
        std::fs::read_to_string(deploy("grafana/provisioning/datasources/prometheus.yml")).unwrap();
    assert!(
        datasource.contains("uid: prometheus")
            && datasource.contains("url: http://prometheus:9090")
    );
    assert!(
        dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["datasource"]["uid"] == "prometheus")
    );
    let provider =
        std::fs::read_to_string(deploy("grafana/provisioning/dashboards/herald.yml")).unwrap();
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .unwrap();
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(compose.contains("./infra/deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro"));
}

#[test]
fn the_collector_pipeline_is_complete_and_wired_to_the_services_and_jaeger() {
    let script = "import sys, yaml\n\
        config = yaml.safe_load(open(sys.argv[1]))\n\
        compose = yaml.safe_load(open(sys.argv[2]))\n\
        problems = []\n\
        for name, pipeline in config['service']['pipelines'].items():\n    \
            for kind in ('receivers', 'processors', 'exporters'):\n        \
                for component in pipeline.get(kind, []):\n            \
                    if component not in (config.get(kind) or {}):\n                \
                        problems.append(f'{name} uses {component}, not defined in {kind}')\n\
        for extension in config['service'].get('extensions', []):\n    \
            if extension not in (config.get('extensions') or {}):\n        \
                problems.append(f'extension {extension} is not defined')\n\
        services = compose['services']\n\
        for name, exporter in config['exporters'].items():\n    \
            host = exporter['endpoint'].split('://')[-1].split(':')[0]\n    \
            if host not in services:\n        \
                problems.append(f'exporter {name} sends to {host}, not a compose service')\n\
        port = config['receivers']['otlp']['protocols']['http']['endpoint'].rsplit(':', 1)[1]\n\
        for name, service in services.items():\n    \
            endpoint = (service.get('environment') or {}).get('OTEL_EXPORTER_OTLP_ENDPOINT')\n    \
            if endpoint and endpoint != f'http://otel-collector:{port}':\n        \
                problems.append(f'{name} exports to {endpoint}')\n\
        herald = [n for n, s in services.items() if 'build' in s]\n\
        missing = [n for n in herald if 'OTEL_EXPORTER_OTLP_ENDPOINT' not in (services[n].get('environment') or {})]\n\
        if missing:\n    \
            problems.append(f'not traced: {missing}')\n\
        print('\\n'.join(problems) or 'wired')\n\
        sys.exit(1 if problems else 0)\n";
    let check = |config: &Path| {
        run(
            "python3",
            &[
                "-c",
                script,
                config.to_str().unwrap(),
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("docker-compose.yml")
                    .to_str()
                    .unwrap(),
            ],
        )
    };
    let config = deploy("otel/collector.yaml");
    let (ok, out) = check(&config);
    assert!(ok && out.trim() == "wired", "{out}");

    let broken = scratch("otel").join("collector.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &broken,
        text.replace("exporters: [otlp/jaeger]", "exporters: [otlp/zipkin]"),
    )
    .unwrap();
    let (ok, out) = check(&broken);
    assert!(!ok && out.contains("traces uses otlp/zipkin"), "{out}");
}

/// The runtime image's filesystem, built as the Dockerfile builds it (`rootfs.sh`), with this
/// build's `herald` in it: it runs there as the non-root user, with nothing else beside it.
#[test]
fn the_runtime_filesystem_runs_herald_as_a_non_root_user_and_holds_nothing_else() {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    for line in [
        "RUN rootfs.sh /rootfs",
        "FROM scratch",
        "COPY --from=rootfs /rootfs /",
        "USER 10001:10001",
    ] {
        assert!(dockerfile.contains(line), "the Dockerfile lacks {line:?}");
    }
    let root = scratch("rootfs").join("image");
    let (ok, out) = run(
        "bash",
        &[
            deploy("rootfs.sh").to_str().unwrap(),
            root.to_str().unwrap(),
            env!("CARGO_BIN_EXE_herald"),
        ],
    );
    assert!(ok, "{out}");
    for absent in ["bin/sh", "bin/bash", "usr/bin/apt-get", "usr/bin/dpkg"] {
        assert!(!root.join(absent).exists(), "{absent} is in the image");
    }
    let secret = "image-secret-of-at-least-thirty-two-bytes";
    let output = Command::new("chroot")
        .args(["--userspec=10001:10001", root.to_str().unwrap()])
        .args(["/usr/local/bin/herald", "token", "--sub", "alice"])
        .env("JWT_HS256_SECRET", secret)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["herald"]);
    jsonwebtoken::decode::<serde_json::Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("a token from inside the image");
    // The data folder is the user's; the CA bundle is there for TLS.
    let (ok, out) = run(
        "stat",
        &["-c", "%u", root.join("var/lib/herald").to_str().unwrap()],
    );
    assert!(ok && out.trim() == "10001", "{out}");
    assert!(root.join("etc/ssl/certs/ca-certificates.crt").exists());
    let _ = std::fs::remove_dir_all(root.parent().unwrap());
}
