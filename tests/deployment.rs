//! The deployment files fed to the binary: every Herald service of docker-compose.yml and of
//! the Kubernetes manifests, with the environment those files give it (read from the files
//! by `infra/scripts/deploy_env.py`, never copied here), passes `herald check`; and a broken
//! setting fails it, named.
//!
//! The mapping from a container's world to this machine is small and explicit: the secrets
//! folder `/run/secrets/herald` and the data folder `/var/lib/herald` become folders of the
//! test's own. Host names stay as written: `herald check` connects to nothing.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::process::HERALD;

/// What compose reads from `.env`: test values of the right shape.
const COMPOSE_ENV: [(&str, &str); 4] = [
    ("POSTGRES_PASSWORD", "test-password"),
    ("SEALING_KEY", support::SEALING_KEY),
    ("STREAM_CURSOR_KEY", support::SEALING_KEY),
    (
        "NOTIFY_UNSUBSCRIBE_SECRET",
        "unsubscribe-secret-of-thirty-two-bytes",
    ),
];

/// The secrets the Kubernetes README tells an operator to create, as files.
const K8S_SECRETS: [(&str, &str); 6] = [
    (
        "database-url",
        "postgres://herald:test-password@postgres/herald",
    ),
    (
        "notify-unsubscribe-secret",
        "unsubscribe-secret-of-thirty-two-bytes",
    ),
    ("sealing-key", support::SEALING_KEY),
    ("stream-cursor-key", support::SEALING_KEY),
    // The key-encryption key of personal data (the compose file's `privacy-keys` secret too).
    ("privacy-keys", support::SEALING_KEY),
    (
        "alert-webhook-url",
        "https://hooks.example.com/services/T0/B0/x",
    ),
];

const SECRETS_IN_CONTAINER: &str = "/run/secrets/herald";
const DATA_IN_CONTAINER: &str = "/var/lib/herald";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A deployment's services: name → (arguments, environment).
type Services = BTreeMap<String, (Vec<String>, BTreeMap<String, String>)>;

/// `deploy_env.py <kind> <path>`, with `env` for compose's `${...}`.
fn deployment(kind: &str, path: &Path, env: &[(&str, &str)]) -> Result<Services, String> {
    let output = Command::new("python3")
        .arg(repo("infra/scripts/deploy_env.py"))
        .arg(kind)
        .arg(path)
        .arg(repo("infra/deploy/Dockerfile"))
        .envs(env.iter().copied())
        .output()
        .expect("python3 runs (infra/scripts/services.sh installs PyYAML)");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let parsed: BTreeMap<String, Value> = serde_json::from_slice(&output.stdout).unwrap();
    Ok(parsed
        .into_iter()
        .map(|(name, service)| {
            let args = service["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let env = service["env"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (name, (args, env))
        })
        .collect())
}

/// A folder of the test's own standing in for the container's `/run/secrets/herald` and
/// `/var/lib/herald`.
struct Container {
    root: PathBuf,
}

impl Container {
    fn new(name: &str) -> Self {
        let root = support::test_dir(&format!(
            "deployment/{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(root.join("secrets")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        for (name, value) in K8S_SECRETS {
            std::fs::write(root.join("secrets").join(name), format!("{value}\n")).unwrap();
        }
        Self { root }
    }

    /// `value` with the container's paths mapped to this machine's.
    fn map(&self, value: &str) -> String {
        value
            .replace(
                SECRETS_IN_CONTAINER,
                self.root.join("secrets").to_str().unwrap(),
            )
            .replace(DATA_IN_CONTAINER, self.root.join("data").to_str().unwrap())
    }
}

/// `herald check <args>` with exactly `env` (and PATH): whether it passed, and what it said.
fn herald_check(
    container: &Container,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> (bool, String) {
    let output = Command::new(HERALD)
        .arg("check")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.clone(), container.map(v))))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[test]
fn every_service_of_docker_compose_and_the_k8s_manifests_passes_herald_check() {
    let compose = deployment("compose", &repo("docker-compose.yml"), &COMPOSE_ENV).unwrap();
    let k8s = deployment("k8s", &repo("infra/deploy/k8s"), &[]).unwrap();
    for (source, services) in [("docker-compose.yml", &compose), ("k8s", &k8s)] {
        let names: Vec<&String> = services.keys().collect();
        for expected in [
            "ingress",
            "auth",
            "audit-log",
            "notifications",
            "search-indexer",
            "reports",
        ] {
            assert!(
                services.contains_key(expected),
                "{source} has no {expected} service: {names:?}"
            );
        }
        let container = Container::new(source);
        for (name, (args, env)) in services {
            let (passed, said) = herald_check(&container, args, env);
            assert!(passed, "{source} {name}: herald check failed:\n{said}");
            assert!(
                said.contains("the settings hold"),
                "{source} {name}: {said}"
            );
        }
    }
}

#[test]
fn a_broken_setting_fails_herald_check_and_is_named() {
    let compose = deployment("compose", &repo("docker-compose.yml"), &COMPOSE_ENV).unwrap();
    let container = Container::new("broken");
    let (args, env) = &compose["notifications"];
    let broken = |name: &str, value: &str| {
        let mut env = env.clone();
        env.insert(name.to_string(), value.to_string());
        herald_check(&container, args, &env)
    };
    for (name, value, named) in [
        ("TRUSTED_PROXIES", "172.16.0.0/33", "TRUSTED_PROXIES"),
        ("SEALING_KEY", "c2hvcnQ=", "SEALING_KEY"),
        ("DATABASE_URL", "mysql://herald@db/herald", "mysql"),
        ("SMTP_URL", "smtp://mail:notaport", "SMTP_URL"),
        ("KAFKA_PROPERTIES", "no.such.property=1", "no.such.property"),
        ("CONSUMER_PREFETCH_KB", "0", "CONSUMER_*"),
        ("JWT_JWKS_URL", "auth:8085/jwks.json", "JWT_JWKS_URL"),
        ("NOTIFY_PUBLIC_URL", "not a url", "NOTIFY_PUBLIC_URL"),
        ("CORS_ORIGINS", "*", "CORS origin"),
        ("HERALD_LISTEN", "0.0.0.0:http", "listen"),
    ] {
        let (passed, said) = broken(name, value);
        assert!(!passed, "{name}={value} passed herald check:\n{said}");
        assert!(
            said.contains(named),
            "{name}={value}: the failure does not name {named}:\n{said}"
        );
    }
    // A secret file named but not mounted.
    let mut env = env.clone();
    env.remove("SEALING_KEY");
    env.insert(
        "SEALING_KEY_FILE".into(),
        format!("{SECRETS_IN_CONTAINER}/no-such-secret"),
    );
    let (passed, said) = herald_check(&container, args, &env);
    assert!(!passed && said.contains("SEALING_KEY_FILE"), "{said}");
    // A required compose variable left unset is compose's own error, before any service.
    let unset = deployment("compose", &repo("docker-compose.yml"), &COMPOSE_ENV[..1]);
    assert!(unset.unwrap_err().contains("SEALING_KEY is required"));
}

/// One Herald service of the deployment, started as its own process.
struct Started {
    _child: tokio::process::Child,
    name: String,
    port: u16,
    log: PathBuf,
}

impl Started {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The port of `HERALD_LISTEN` as the deployment gives it (`0.0.0.0:8081`).
fn container_port(env: &BTreeMap<String, String>) -> u16 {
    env["HERALD_LISTEN"]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Replaces every `from` with its `to`, longest first.
fn mapped(value: &str, map: &[(String, String)]) -> String {
    let mut value = value.to_string();
    for (from, to) in map {
        value = value.replace(from.as_str(), to);
    }
    value
}

/// A self-signed certificate where infra/deploy/nginx/nginx.conf expects one.
fn certificate(dir: &Path) {
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=herald.test", "-keyout"])
        .arg(dir.join("certs/herald.key"))
        .arg("-out")
        .arg(dir.join("certs/herald.crt"))
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
}

/// Debian's nginx, running infra/deploy/nginx/nginx.conf with its ports and upstreams mapped
/// as `map` says; killed when dropped.
struct Nginx {
    child: std::process::Child,
    https: u16,
}

impl Nginx {
    fn start(dir: &Path, map: &[(String, String)]) -> Self {
        certificate(dir);
        let (http, https) = (free_port(), free_port());
        let config = std::fs::read_to_string(repo("infra/deploy/nginx/nginx.conf")).unwrap();
        let config = mapped(&config, map)
            .replace(
                "listen 80 default_server;",
                &format!("listen 127.0.0.1:{http} default_server;"),
            )
            .replace(
                "listen 443 ssl http2 default_server;",
                &format!("listen 127.0.0.1:{https} ssl http2 default_server;"),
            );
        assert!(
            config.contains(&format!(":{https} ssl")),
            "the listen line moved"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let log = std::fs::File::create(dir.join("nginx.log")).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(format!("{}/", dir.display()))
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(format!(
                "daemon off; pid {};",
                dir.join("nginx.pid").display()
            ))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nginx runs (infra/scripts/services.sh installs it)");
        Self { child, https }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether nginx itself answered (its own error page), rather than a Herald service.
fn answered_by_nginx(response: &reqwest::Response) -> bool {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    content_type.starts_with("text/html") && response.headers().get("x-request-id").is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_composed_deployment_serves_every_route_through_nginx() {
    // What the deployment's other containers provide, on this machine.
    let brokers = support::brokers().await;
    let database = support::audit::fresh_postgres().await;
    let redis = std::env::var("REDIS_URL")
        .expect("REDIS_URL must point at a Redis server: run infra/scripts/test.sh");
    let smtp = support::smtp::SmtpServer::start("deployment").await;
    let (registry, _) = support::registry::start().await;
    let (db_base, db_name) = database.rsplit_once('/').unwrap();
    let db_host = db_base.rsplit_once('@').unwrap().1;
    let db_password = db_base
        .rsplit_once('@')
        .unwrap()
        .0
        .rsplit_once(':')
        .unwrap()
        .1;
    let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);

    let compose_env = [
        ("POSTGRES_PASSWORD", db_password),
        ("SEALING_KEY", support::SEALING_KEY),
        ("STREAM_CURSOR_KEY", support::SEALING_KEY),
        (
            "NOTIFY_UNSUBSCRIBE_SECRET",
            "unsubscribe-secret-of-thirty-two-bytes",
        ),
    ];
    let services = deployment("compose", &repo("docker-compose.yml"), &compose_env).unwrap();
    // Host names to loopback, ports to free ones: every replacement the test makes.
    let mut map: Vec<(String, String)> = vec![
        (
            "kafka-1:9092,kafka-2:9092,kafka-3:9092".into(),
            brokers.clone(),
        ),
        ("@postgres/herald".into(), format!("@{db_host}/{db_name}")),
        ("redis://redis:6379".into(), redis),
        ("http://schema-registry:8081".into(), registry),
        ("smtp://mail:1025".into(), smtp.url()),
        (
            "http://otel-collector:4318".into(),
            format!("http://127.0.0.1:{}", free_port()),
        ),
    ];
    // The compose file's `privacy-keys` secret, mounted where its services read it.
    let keys = support::test_dir(&format!(
        "deployment/keys-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("privacy-keys"),
        format!("{}\n", support::SEALING_KEY),
    )
    .unwrap();
    map.push((
        format!("{SECRETS_IN_CONTAINER}/privacy-keys"),
        keys.join("privacy-keys").display().to_string(),
    ));
    let mut ports = BTreeMap::new();
    for (name, (_, env)) in &services {
        let port = free_port();
        let listen = &env["HERALD_LISTEN"];
        map.push((listen.clone(), format!("127.0.0.1:{port}")));
        map.push((
            format!("http://{name}:{}", container_port(env)),
            format!("http://127.0.0.1:{port}"),
        ));
        ports.insert(name.clone(), port);
    }
    // The nginx configuration names the ingress on the image's own port.
    map.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));

    let root = support::test_dir(&format!("deployment/up-{}", uuid::Uuid::new_v4().simple()));
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // auth first: the others fetch its JWKS.
    let mut order: Vec<&String> = services.keys().collect();
    order.sort_by_key(|name| name.as_str() != "auth");
    let mut started = Vec::new();
    for name in order {
        let (args, env) = &services[name];
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("stderr.log");
        let mut command = tokio::process::Command::new(HERALD);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| {
                let value = mapped(v, &map).replace(DATA_IN_CONTAINER, dir.to_str().unwrap());
                (k.clone(), value)
            }))
            // The test's own topics, beside the other tests' on the shared broker.
            .env("TOPIC_PREFIX", &prefix)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        let service = Started {
            _child: command.spawn().unwrap(),
            name: name.clone(),
            port: ports[name],
            log,
        };
        support::eventually(
            Duration::from_secs(120),
            &format!("{} answering /healthz", service.name),
            || async {
                let health = client
                    .get(format!("http://127.0.0.1:{}/healthz", service.port))
                    .send()
                    .await;
                if health.is_ok_and(|r| r.status() == 200) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} never answered /healthz; its log:\n{}",
                        service.name,
                        service.log()
                    ))
                }
            },
        )
        .await;
        started.push(service);
    }

    let nginx = Nginx::start(&root, &map);
    let base = format!("https://127.0.0.1:{}", nginx.https);
    support::eventually(Duration::from_secs(20), "nginx answering", || async {
        client
            .get(format!("{base}/api/v1/event-types"))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("nginx never answered: {e}"))
    })
    .await;

    // Every path of the OpenAPI document and every route of the services' routers.
    let openapi: Value = client
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut paths: Vec<(String, String)> = support::routes::routes()
        .into_iter()
        .map(|route| (route.method, route.path))
        .collect();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            paths.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    paths.sort();
    paths.dedup();
    // Operators reach these on the internal network only; nginx answers them 404 itself.
    let internal = ["/metrics", "/healthz", "/readyz"];
    let mut unserved = Vec::new();
    for (method, path) in &paths {
        let concrete: String = path
            .split('/')
            .map(|part| if part.starts_with('{') { "x" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let request = client
            .request(method.parse().unwrap(), format!("{base}{concrete}"))
            .header("content-type", "application/json")
            .body("{}");
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let by_nginx = answered_by_nginx(&response);
        if internal.contains(&path.as_str()) {
            assert!(
                status == 404 && by_nginx,
                "{path} must stay internal: {status}"
            );
        } else if (status == 404 && by_nginx) || status == 502 || status == 504 {
            unserved.push(format!("{method} {path}: {status}"));
        }
    }
    assert!(
        unserved.is_empty(),
        "answered by nginx, not by a service: {unserved:#?}\nnginx log:\n{}",
        std::fs::read_to_string(root.join("nginx.log")).unwrap_or_default()
    );
    eprintln!(
        "{} routes through nginx, every one reached its service",
        paths.len()
    );

    // The console's page and script, with the console's policy only: the API's
    // `default-src 'none'` would stop its script.
    for path in ["/console", "/console/console.js", "/console/console.css"] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let policies: Vec<_> = response
            .headers()
            .get_all("content-security-policy")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(policies, [replay::console::CSP], "{path}");
        assert_eq!(response.headers()["x-frame-options"], "DENY", "{path}");
    }

    // And a user's first minutes through the proxy: register, sign in, post an event that
    // the services verify with the auth service's keys.
    let email = format!("deploy-{}@example.com", uuid::Uuid::new_v4().simple());
    let registered = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"email": email, "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        registered.status(),
        201,
        "{}",
        registered.text().await.unwrap()
    );
    let login: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().expect("an access token");
    let me: Value = client
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = me["id"].as_str().expect("the account's id").to_string();
    let event = serde_json::json!({"type": "order.placed", "data": {
        "order_id": "o-deploy", "customer_id": user_id,
        "items": [{"sku": "tea", "quantity": 1, "unit_price_cents": 450}],
        "total_cents": 450, "currency": "EUR"}});
    let accepted = client
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(token)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202, "{}", accepted.text().await.unwrap());
    for service in &started {
        let log = service.log();
        assert!(
            !log.contains("panicked"),
            "{} panicked:\n{log}",
            service.name
        );
    }
}
