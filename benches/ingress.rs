//! Ingress throughput and latency against a raw producer on the same broker, in one run.
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench ingress
//!
//! Starts the real `herald ingress` binary as its own process (so its RSS is its own), then:
//! 1. the ceiling: the same Avro events, with the same headers, written by a raw rdkafka
//!    producer (platform's Publisher, batches of 100, BENCH_IN_FLIGHT batches at once,
//!    default 32), each event its own, with its own id, encoded before the clock starts;
//! 2. batched ingress throughput: BENCH_IN_FLIGHT clients posting batches of 100 events
//!    (BENCH_EVENTS per round on each side, default 100,000);
//! 3. single-event ingress throughput: 32 clients posting one event per request, with the
//!    ingress's CPU per request (its own /proc time; the ingress runs with `RUST_LOG=warn`,
//!    so without its request log);
//! 4. open-loop latency at 25, 50 and 75% of (2) and of (3): requests sent at fixed
//!    intervals, latency measured from the intended send time so queueing is not hidden,
//!    and the ingress's CPU per request answered;
//!    and at 150%, an overload: how many requests were shed (503) and how large the ingress
//!    grew meanwhile (the load generator keeps at most MAX_OUTSTANDING requests under way
//!    and counts those it could not send apart);
//! 5. the floor under (4): the raw producer's batches of 100, open loop, at the event rate of
//!    the ingress's batches at 50%, so a p99 can be told apart from the broker's own;
//! 6. the HTTP floor: the same batches posted to a server that does only what every HTTP
//!    front of Kafka must (this benchmark's own executable, started again as its own process
//!    on the serving code the ingress uses): it reads each body and publishes a batch of 100
//!    events encoded as the raw producer's are (every body here holds 100), then answers 202
//!    with a body the size of the ingress's. No auth, no JSON, no Avro, no middleware.
//!    Measured in the rounds of (1) and (2), and open loop at the rate of (5). What it
//!    reaches is what any ingress on this machine could at best; the ingress's own work is
//!    the difference between the two.
//! 7. what each setting costs (request log at INFO or off, traces exported with every request
//!    sampled or 1 in 100): an ingress process of its own for each, single events from 32
//!    clients at saturation, then from 8 keep-alive clients at 1,800 requests/s, then batches
//!    of 100 from 32 clients, with its CPU per request (or event); the HTTP floor alike. All
//!    the processes run at once and take turns over three rounds; medians are reported.
//!    BENCH_BASELINE_HERALD names another build's executable to measure beside this one's
//!    (a before and after in one run), BENCH_EXTRA_SETTINGS more settings
//!    (`name:KEY=value,KEY=value;...`), and BENCH_ONLY_SETTINGS runs this part alone.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use events::{Catalog, Codec, Envelope, WireFormat};
use platform::kafka::{KafkaArgs, OutgoingRecord, Publisher};
use serde_json::{Value, json};

use common::SECRET;

const BATCH: usize = 100;
/// Measured rounds, after WARMUP of both sides untimed: a first round found the producer and
/// the broker cold, at a fifth of the later rate, and the broker's JIT takes seconds.
const ROUNDS: usize = 5;
const WARMUP: Duration = Duration::from_secs(10);
const SINGLE_SECONDS: u64 = 15;
const OPEN_LOOP_SECONDS: u64 = 15;
/// Requests an open loop keeps under way at most: well under this process's file limit.
const MAX_OUTSTANDING: usize = 8_000;
/// Distinct events the raw producer and the HTTP floor send, each in turn: a round's worth at
/// the default BENCH_EVENTS, so no batch of a round repeats another's.
const POOL: usize = 100_000;

fn order(i: usize) -> Value {
    json!({"type": "order.placed", "data": {"order_id": format!("o-{i}"), "customer_id": "alice",
        "items": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}], "total_cents": 900, "currency": "EUR"}})
}

/// An event's JSON text with its type before its data, as the API's examples write it (`json!`
/// sorts members, which puts data first). The data's own members stay sorted, not in the
/// schema's order as in the examples: the ingress encodes them in either order.
fn order_text(i: usize) -> String {
    format!(r#"{{"type":"order.placed","data":{}}}"#, order(i)["data"])
}

/// Set on the HTTP floor's process: the address it serves on.
const FLOOR_LISTEN: &str = "BENCH_HTTP_FLOOR";
/// Set on the HTTP floor's process: the topic prefix of the run that started it.
const FLOOR_PREFIX: &str = "BENCH_HTTP_FLOOR_PREFIX";

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    if let (Ok(listen), Ok(prefix)) = (std::env::var(FLOOR_LISTEN), std::env::var(FLOOR_PREFIX)) {
        return http_floor(&listen, kafka_args(&brokers, prefix)).await;
    }
    // Batches in flight, the same on both sides; 32 saturates this machine.
    let in_flight: usize = std::env::var("BENCH_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    // Events per round on each side, rounded down to whole batches per client.
    let per_client = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100_000)
        / BATCH
        / in_flight;
    let round_events = (per_client * BATCH * in_flight) as f64;
    let prefix = format!("bench{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let kafka = kafka_args(&brokers, prefix.clone());

    // The ingress, as its own process.
    let port = free_port();
    let data = std::env::temp_dir().join(format!("herald-bench-{port}"));
    let started = Instant::now();
    let mut child = tokio::process::Command::new(common::HERALD)
        .arg("ingress")
        .env("KAFKA_BROKERS", &brokers)
        .env("TOPIC_PREFIX", &prefix)
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_DATA_DIR", &data)
        .env("JWT_HS256_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        // One user posts everything: the default per-user limit would refuse most of it.
        .env("RATE_LIMIT_USER", "1000000000/1m")
        // Every client of the load is on this one address: the per-address cap would close
        // what the whole-process cap queues.
        .env("MAX_CONNECTIONS_PER_ADDRESS", "1000000")
        // Counted in process, the default: `bench.sh` exports REDIS_URL for the benchmarks
        // that ask for shared counters (auth), and this one measured Redis's transactions
        // and its server's CPU beside the ingress's until it was removed here.
        .env_remove("REDIS_URL")
        .kill_on_drop(true)
        .spawn()
        .expect("herald ingress starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    wait_ready(&client, &base).await;
    let ready = started.elapsed();
    let pid = child.id().unwrap();
    // The customer of every order: a user publishes only their own.
    let token = ingress::auth::mint_hs256(
        &secrecy::SecretString::from(SECRET),
        "alice",
        &["user".to_string()],
        "herald",
        "herald",
        Duration::from_secs(3600),
    )
    .unwrap();
    // The same orders from a service, which may publish for anyone: no owner check, the rest
    // alike. Alternated with the user's rounds, it prices the ownership check alone.
    let service_token = ingress::auth::mint_hs256(
        &secrecy::SecretString::from(SECRET),
        "bench-service",
        &["service".to_string()],
        "herald",
        "herald",
        Duration::from_secs(3600),
    )
    .unwrap();

    // 1. Raw producer ceiling with the same encoded events.
    let publisher = Publisher::new(&kafka, Duration::from_secs(30)).unwrap();
    let records = Arc::new(Pool::new(&kafka, POOL));
    let events: Vec<String> = (0..BATCH).map(order_text).collect();
    let batch_body = Bytes::from(format!(r#"{{"events":[{}]}}"#, events.join(",")));
    let (mut floor, floor_base) = start_http_floor(&brokers, &prefix).await;
    let floor_pid = floor.id().unwrap();
    let floor_target = Arc::new(Target {
        client: client.clone(),
        url: format!("{floor_base}/api/v1/events"),
        token: token.clone(),
    });
    // BENCH_ONLY_SETTINGS: only (7), what each setting costs a single request.
    if std::env::var_os("BENCH_ONLY_SETTINGS").is_some() {
        let costs = settings_costs(&brokers, &prefix, &token, (floor_pid, &floor_target)).await;
        print_settings_costs(&costs);
        return;
    }
    let target = Arc::new(Target {
        client: client.clone(),
        url: format!("{base}/api/v1/events"),
        token,
    });
    let service_target = Arc::new(Target {
        client: client.clone(),
        url: format!("{base}/api/v1/events"),
        token: service_token,
    });

    // 1, 2 and 6 alternate over several rounds, so a slow moment of the shared machine (or of
    // the broker: log rolls, GC) does not land on one side only; medians are reported.
    let mut raw_rates = Vec::new();
    let mut batched_rates = Vec::new();
    let mut floor_rates = Vec::new();
    // Microseconds of CPU per event: the raw producer's, the ingress's, the HTTP client's,
    // the HTTP floor's.
    let (mut raw_cpu, mut ingress_cpu, mut client_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut floor_cpu = Vec::new();
    let (mut service_rates, mut service_cpu) = (Vec::new(), Vec::new());
    let own_cpu = || common::cpu_seconds(std::process::id());
    // Warm-up, untimed: the broker's JIT compiles for some seconds after it starts.
    let warm_until = Instant::now() + WARMUP;
    while Instant::now() < warm_until {
        raw_round(&publisher, &records, in_flight, per_client).await;
        batched_round(&target, &batch_body, in_flight, per_client).await;
        batched_round(&floor_target, &batch_body, in_flight, per_client).await;
    }
    for round in 0..ROUNDS {
        // This process does nothing else meanwhile: its CPU is the raw producer's.
        let own_before = own_cpu();
        let t = Instant::now();
        raw_round(&publisher, &records, in_flight, per_client).await;
        raw_rates.push(round_events / t.elapsed().as_secs_f64());
        raw_cpu.push((own_cpu() - own_before) / round_events * 1e6);

        // The user's and the service's rounds take turns going first, so whatever follows
        // the raw round (the broker flushing, say) lands on each alike.
        let user_first = round % 2 == 0;
        if !user_first {
            let ingress_before = common::cpu_seconds(pid);
            let t = Instant::now();
            batched_round(&service_target, &batch_body, in_flight, per_client).await;
            service_rates.push(round_events / t.elapsed().as_secs_f64());
            service_cpu.push((common::cpu_seconds(pid) - ingress_before) / round_events * 1e6);
        }
        let (own_before, ingress_before) = (own_cpu(), common::cpu_seconds(pid));
        let t = Instant::now();
        batched_round(&target, &batch_body, in_flight, per_client).await;
        batched_rates.push(round_events / t.elapsed().as_secs_f64());
        ingress_cpu.push((common::cpu_seconds(pid) - ingress_before) / round_events * 1e6);
        client_cpu.push((own_cpu() - own_before) / round_events * 1e6);
        if user_first {
            let ingress_before = common::cpu_seconds(pid);
            let t = Instant::now();
            batched_round(&service_target, &batch_body, in_flight, per_client).await;
            service_rates.push(round_events / t.elapsed().as_secs_f64());
            service_cpu.push((common::cpu_seconds(pid) - ingress_before) / round_events * 1e6);
        }

        let floor_before = common::cpu_seconds(floor_pid);
        let t = Instant::now();
        batched_round(&floor_target, &batch_body, in_flight, per_client).await;
        floor_rates.push(round_events / t.elapsed().as_secs_f64());
        floor_cpu.push((common::cpu_seconds(floor_pid) - floor_before) / round_events * 1e6);
    }
    let raw_rate = common::median(&raw_rates);
    let batched_rate = common::median(&batched_rates);
    let raw_cpu = common::median(&raw_cpu);
    let ingress_cpu_rounds = ingress_cpu.clone();
    let ingress_cpu = common::median(&ingress_cpu);
    let client_cpu = common::median(&client_cpu);
    let http_floor_rate = common::median(&floor_rates);
    let floor_cpu = common::median(&floor_cpu);
    let service_rate = common::median(&service_rates);
    let service_cpu_median = common::median(&service_cpu);
    // Round by round, so a slow moment lands on both sides of each ratio.
    let owner_cost: Vec<f64> = ingress_cpu_rounds
        .iter()
        .zip(&service_cpu)
        .map(|(user, service)| 100.0 * (user / service - 1.0))
        .collect();

    // 3. Single events, closed loop, 32 clients.
    let single_body = Bytes::from(order_text(1));
    let until = Instant::now() + Duration::from_secs(SINGLE_SECONDS);
    let cpu_before = common::cpu_seconds(pid);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (target, body) = (target.clone(), single_body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let s = Instant::now();
                accepted(&target, &body).await;
                latencies.push(s.elapsed());
            }
            latencies
        }));
    }
    let mut closed = Vec::new();
    for task in tasks {
        closed.extend(task.await.unwrap());
    }
    let single_rate = closed.len() as f64 / t.elapsed().as_secs_f64();
    // The ingress's own CPU per acknowledged request (its /proc time; the load generator is
    // this process).
    let single_cpu = (common::cpu_seconds(pid) - cpu_before) * 1e6 / closed.len() as f64;

    // 4. Open loop at 25, 50 and 75% of each maximum, single events and batches, with the
    //    ingress's resident memory sampled every 100 ms during each; and at 150%, beyond
    //    what it can serve, where its memory stays bounded because it sheds what does not fit.
    let mut open_loops = Vec::new();
    for (what, body, saturation) in [
        ("single events", &single_body, single_rate),
        ("batches of 100", &batch_body, batched_rate / BATCH as f64),
    ] {
        for share in [0.25, 0.50, 0.75, 1.5] {
            let rate = saturation * share;
            let cpu_before = common::cpu_seconds(pid);
            let (mut seen, rss_kb) = max_rss_during(pid, open_loop(&target, body, rate)).await;
            // Per request answered: idle wakeups and timers count too, as at any rate.
            let cpu =
                (common::cpu_seconds(pid) - cpu_before) * 1e6 / seen.latencies.len().max(1) as f64;
            let latencies = percentiles(&mut seen.latencies);
            let lost = (seen.shed, seen.unsent, seen.unconnected, seen.reset);
            open_loops.push((what, share, rate, latencies, lost, rss_kb, cpu));
        }
    }

    // 5. The raw producer at the events/s of the ingress's batches at 50%.
    let floor_rate = batched_rate / BATCH as f64 * 0.5;
    let mut raw = raw_open_loop(&publisher, &records, floor_rate).await;
    let raw_open = percentiles(&mut raw.latencies);
    // 6. The HTTP floor at that rate too.
    let mut floor_open = open_loop(&floor_target, &batch_body, floor_rate).await;
    let floor_open_shed =
        floor_open.shed + floor_open.unsent + floor_open.unconnected + floor_open.reset;
    let floor_open = percentiles(&mut floor_open.latencies);

    // 7. What each setting costs a single request.
    let costs = settings_costs(&brokers, &prefix, &target.token, (floor_pid, &floor_target)).await;
    let _ = floor.kill().await;

    let rss_kb = common::status_kb(pid, "VmHWM:");
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&data);

    let (c50, c99) = (percentile(&mut closed, 0.50), percentile(&mut closed, 0.99));
    println!("| figure | value |\n|---|---|");
    println!(
        "| ingress ready after process start (broker up) | {} ms |",
        ready.as_millis()
    );
    println!(
        "| raw producer, same events, {in_flight} batches in flight (ceiling) | {raw_rate:.0} events/s |"
    );
    println!(
        "| ingress, batches of {BATCH}, {in_flight} clients | {batched_rate:.0} events/s ({:.0}% of raw) |",
        100.0 * batched_rate / raw_rate
    );
    println!(
        "| HTTP floor (reads the body, publishes the same records, answers), batches of \
         {BATCH}, {in_flight} clients | {http_floor_rate:.0} events/s ({:.0}% of raw; the \
         ingress is {:.0}% of it) |",
        100.0 * http_floor_rate / raw_rate,
        100.0 * batched_rate / http_floor_rate
    );
    println!(
        "| CPU per event: raw producer / ingress, batched / its HTTP client / HTTP floor | \
         {raw_cpu:.1} / {ingress_cpu:.1} / {client_cpu:.1} / {floor_cpu:.1} µs |"
    );
    println!(
        "| rounds (raw / batched / HTTP floor events/s) | {} |",
        raw_rates
            .iter()
            .zip(&batched_rates)
            .zip(&floor_rates)
            .map(|((r, b), f)| format!("{r:.0} / {b:.0} / {f:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| ownership check: the same batches from a service (no owner check), alternated with \
         the user's | {service_rate:.0} events/s, CPU per event {service_cpu_median:.2} µs \
         against the user's {ingress_cpu:.2} µs; the check's cost by round {} (median {:+.1}%) |",
        owner_cost
            .iter()
            .map(|c| format!("{c:+.1}%"))
            .collect::<Vec<_>>()
            .join(", "),
        common::median(&owner_cost)
    );
    println!(
        "| ingress, single events, 32 clients | {single_rate:.0} requests/s, p50 {} ms, p99 {} \
         ms; CPU per request {single_cpu:.1} µs |",
        ms(c50),
        ms(c99)
    );
    for (what, share, rate, (p50, p99, p999), (shed, unsent, unconnected, reset), rss_kb, cpu) in
        open_loops
    {
        println!(
            "| ingress, {what}, open loop at {rate:.0} requests/s ({:.0}% of its maximum) | p50 \
             {} ms, p99 {} ms, p99.9 {} ms; CPU per request {cpu:.1} µs; RSS at most {:.1} MB; \
             {shed} shed (503), {unsent} not sent (client at {MAX_OUTSTANDING} outstanding), \
             {unconnected} could not connect, {reset} reset |",
            share * 100.0,
            ms(p50),
            ms(p99),
            ms(p999),
            rss_kb as f64 / 1024.0
        );
    }
    println!(
        "| raw producer, batches of {BATCH}, open loop at {:.0} batches/s (the ingress's 50%) | \
         p50 {} ms, p99 {} ms, p99.9 {} ms |",
        floor_rate,
        ms(raw_open.0),
        ms(raw_open.1),
        ms(raw_open.2)
    );
    println!(
        "| HTTP floor, batches of {BATCH}, open loop at {:.0} batches/s (the ingress's 50%) | \
         p50 {} ms, p99 {} ms, p99.9 {} ms; {floor_open_shed} not served |",
        floor_rate,
        ms(floor_open.0),
        ms(floor_open.1),
        ms(floor_open.2)
    );
    println!(
        "| ingress peak RSS over the whole run (VmHWM) | {:.1} MB |",
        rss_kb as f64 / 1024.0
    );
    print_settings_costs(&costs);
}

/// Clients of the saturated single-event loops.
const SINGLE_CLIENTS: usize = 32;
/// The moderate load: most deployments run far below saturation, where idle wakeups and
/// timers weigh most on each request.
const PACED_CLIENTS: usize = 8;
const PACED_RATE: f64 = 1_800.0;
const SETTING_SECONDS: u64 = 5;
const SETTING_ROUNDS: usize = 3;

/// The settings priced one by one, each on an ingress process of its own: the environment
/// beyond the benchmark's (`RUST_LOG` unset means the default, INFO).
fn settings(otlp: &str) -> Vec<(String, Vec<(String, String)>)> {
    let traced = |sampler: &str, arg: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), otlp.to_string()),
            ("OTEL_TRACES_SAMPLER".to_string(), sampler.to_string()),
            ("OTEL_TRACES_SAMPLER_ARG".to_string(), arg.to_string()),
        ]
    };
    vec![
        (
            "defaults: request log at INFO (JSON), no trace exporter",
            vec![],
        ),
        (
            "request log off (RUST_LOG=warn)",
            vec![("RUST_LOG".to_string(), "warn".to_string())],
        ),
        (
            "request log at INFO, traces exported, every one sampled",
            traced("parentbased_always_on", "1"),
        ),
        (
            "request log at INFO, traces exported, 1 in 100 sampled",
            traced("parentbased_traceidratio", "0.01"),
        ),
    ]
    .into_iter()
    .map(|(name, env)| (name.to_string(), env))
    // BENCH_EXTRA_SETTINGS: more, as `name:KEY=value,KEY=value;name:...`.
    .chain(
        std::env::var("BENCH_EXTRA_SETTINGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|setting| {
                let (name, env) = setting.split_once(':')?;
                let env = env
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Some((name.to_string(), env))
            }),
    )
    .collect()
}

/// A single request's cost on one process: medians over the rounds.
#[derive(Default)]
struct SingleCost {
    saturated_rate: Vec<f64>,
    saturated_cpu: Vec<f64>,
    paced_rate: Vec<f64>,
    paced_cpu: Vec<f64>,
    log_bytes: Vec<f64>,
    /// CPU per event of batches of BATCH, SINGLE_CLIENTS clients.
    batched_cpu: Vec<f64>,
}

/// One process the settings section measures.
struct Measured {
    name: String,
    pid: u32,
    target: Target,
    log: Option<std::path::PathBuf>,
    process: Option<tokio::process::Child>,
    cost: SingleCost,
}

/// What each setting costs a single request: an ingress process of its own for each setting
/// (and each build, with BENCH_BASELINE_HERALD: another build's executable, for a before and
/// after in one run), and the HTTP floor. All run at once, idle but for the one measured;
/// SETTING_ROUNDS rounds take each in turn, so a slow moment of the shared machine lands on
/// every side, and medians are reported.
async fn settings_costs(
    brokers: &str,
    prefix: &str,
    token: &str,
    (floor_pid, floor): (u32, &Target),
) -> Vec<(String, SingleCost)> {
    let otlp = OtlpSink::start().await;
    let baseline = std::env::var("BENCH_BASELINE_HERALD").ok();
    let builds: Vec<(&str, &str)> = std::iter::once(("", common::HERALD))
        .chain(baseline.as_deref().map(|b| (" (baseline)", b)))
        .collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let mut measured = Vec::new();
    for (setting, env) in settings(&otlp.endpoint) {
        for (build, executable) in &builds {
            let log = std::env::temp_dir().join(format!(
                "herald-bench-{}.log",
                uuid::Uuid::new_v4().simple()
            ));
            let mut command = common::herald_command_of(
                executable,
                "ingress",
                &[("KAFKA_BROKERS", brokers), ("TOPIC_PREFIX", prefix)],
            );
            command
                .env_remove("RUST_LOG")
                .stderr(std::fs::File::create(&log).unwrap());
            for (key, value) in &env {
                command.env(key, value);
            }
            let (process, base) = common::start::announced(command, Duration::from_secs(60)).await;
            measured.push(Measured {
                name: format!("{setting}{build}"),
                pid: process.id().unwrap(),
                target: Target {
                    client: client.clone(),
                    url: format!("{base}/api/v1/events"),
                    token: token.to_string(),
                },
                log: Some(log),
                process: Some(process),
                cost: SingleCost::default(),
            });
        }
    }
    measured.push(Measured {
        name: "HTTP floor (reads the body, publishes one record, answers)".into(),
        pid: floor_pid,
        target: floor.clone(),
        log: None,
        process: None,
        cost: SingleCost::default(),
    });
    let body = Bytes::from(order_text(1));
    let events: Vec<String> = (0..BATCH).map(order_text).collect();
    let batch = Bytes::from(format!(r#"{{"events":[{}]}}"#, events.join(",")));
    for m in &measured {
        closed_loop(&m.target, &body, SINGLE_CLIENTS, Duration::from_secs(2)).await;
    }
    for _ in 0..SETTING_ROUNDS {
        for m in &mut measured {
            let log = m.log.clone();
            let log_size = || {
                log.as_ref()
                    .map_or(0, |l| std::fs::metadata(l).map_or(0, |m| m.len()))
            };
            let length = Duration::from_secs(SETTING_SECONDS);
            let size = log_size();
            let single = closed_loop(&m.target, &body, SINGLE_CLIENTS, length);
            let (answered, seconds, cpu) = with_cpu(m.pid, single).await;
            m.cost.saturated_rate.push(answered / seconds);
            m.cost.saturated_cpu.push(cpu / answered);
            // The log's writer gathers lines for some milliseconds before writing them.
            tokio::time::sleep(Duration::from_millis(200)).await;
            m.cost.log_bytes.push((log_size() - size) as f64 / answered);
            let moderate = paced(&m.target, &body, PACED_CLIENTS, PACED_RATE, length);
            let (answered, seconds, cpu) = with_cpu(m.pid, moderate).await;
            m.cost.paced_rate.push(answered / seconds);
            m.cost.paced_cpu.push(cpu / answered);
            let batches = closed_loop(&m.target, &batch, SINGLE_CLIENTS, length);
            let (answered, _, cpu) = with_cpu(m.pid, batches).await;
            m.cost.batched_cpu.push(cpu / (answered * BATCH as f64));
        }
    }
    let mut costs = Vec::new();
    for m in measured {
        if let Some(mut process) = m.process {
            let _ = process.kill().await;
        }
        if let Some(log) = &m.log {
            let _ = std::fs::remove_file(log);
        }
        costs.push((m.name, m.cost));
    }
    println!(
        "OTLP receiver (the traced settings' collector): {} requests, {} bytes",
        otlp.requests.load(std::sync::atomic::Ordering::Relaxed),
        otlp.bytes.load(std::sync::atomic::Ordering::Relaxed)
    );
    costs
}

fn print_settings_costs(costs: &[(String, SingleCost)]) {
    println!(
        "\nCPU per single request, by setting: an ingress process of its own for each, \
         {SINGLE_CLIENTS} clients at saturation, then {PACED_CLIENTS} keep-alive clients at \
         {PACED_RATE:.0} requests/s, then batches of {BATCH} from {SINGLE_CLIENTS} clients; the \
         process's own CPU (/proc) per request (or event) answered; medians of \
         {SETTING_ROUNDS} rounds of {SETTING_SECONDS} s each, the processes in turn.\n"
    );
    println!(
        "| setting | saturated: requests/s | CPU per request | at {PACED_RATE:.0}/s: requests/s \
         | CPU per request | log bytes per request | batches: CPU per event |\n\
         |---|---|---|---|---|---|---|"
    );
    for (setting, cost) in costs {
        println!(
            "| {setting} | {:.0} | {:.1} µs | {:.0} | {:.1} µs | {:.0} | {:.2} µs |",
            common::median(&cost.saturated_rate),
            common::median(&cost.saturated_cpu),
            common::median(&cost.paced_rate),
            common::median(&cost.paced_cpu),
            common::median(&cost.log_bytes),
            common::median(&cost.batched_cpu)
        );
    }
}

/// `clients` clients posting `body` one after another for `length`; returns the requests
/// answered.
async fn closed_loop(target: &Target, body: &Bytes, clients: usize, length: Duration) -> usize {
    let until = Instant::now() + length;
    let loops = (0..clients).map(|_| client_loop(target.clone(), body.clone(), until, None));
    answered_by(loops).await
}

/// `clients` clients, each on a keep-alive connection of its own, posting `body` at `rate`
/// requests/s between them for `length`; returns the requests answered.
async fn paced(
    target: &Target,
    body: &Bytes,
    clients: usize,
    rate: f64,
    length: Duration,
) -> usize {
    let every = Duration::from_secs_f64(clients as f64 / rate);
    let until = Instant::now() + length;
    let loops = (0..clients).map(|c| {
        let own = Target {
            client: reqwest::Client::new(),
            ..target.clone()
        };
        // Spread over the interval, so the clients do not send in step.
        let first = tokio::time::Instant::now() + every.mul_f64(c as f64 / clients as f64);
        let mut tick = tokio::time::interval_at(first, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        client_loop(own, body.clone(), until, Some(tick))
    });
    answered_by(loops).await
}

/// One client posting `body` until `until`, at each `tick` when there is one, else as soon as
/// the answer before is in; returns the requests answered.
async fn client_loop(
    target: Target,
    body: Bytes,
    until: Instant,
    mut tick: Option<tokio::time::Interval>,
) -> usize {
    let mut answered = 0;
    while Instant::now() < until {
        if let Some(tick) = &mut tick {
            tick.tick().await;
        }
        accepted(&target, &body).await;
        answered += 1;
    }
    answered
}

/// What `load` answered, the seconds it took, and the microseconds of CPU `pid` spent
/// meanwhile.
async fn with_cpu(pid: u32, load: impl std::future::Future<Output = usize>) -> (f64, f64, f64) {
    let (cpu, started) = (common::cpu_seconds(pid), Instant::now());
    let answered = load.await as f64;
    let seconds = started.elapsed().as_secs_f64();
    (answered, seconds, (common::cpu_seconds(pid) - cpu) * 1e6)
}

/// Runs the clients' loops at once; the requests they answered between them.
async fn answered_by(
    loops: impl Iterator<Item = impl std::future::Future<Output = usize> + Send + 'static>,
) -> usize {
    let tasks: Vec<_> = loops.map(tokio::spawn).collect();
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    answered
}

/// An OTLP/HTTP collector that takes every export and keeps only counts: the traced settings
/// export to it.
struct OtlpSink {
    endpoint: String,
    requests: Arc<std::sync::atomic::AtomicU64>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl OtlpSink {
    async fn start() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (r, b) = (requests.clone(), bytes.clone());
        let router = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                r.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(body.len() as u64, Ordering::Relaxed);
                async { axum::http::StatusCode::OK }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            endpoint,
            requests,
            bytes,
        }
    }
}

/// The broker and topics of a run: the ingress inherits KAFKA_PROPERTIES too, so every side
/// produces alike.
fn kafka_args(brokers: &str, topic_prefix: String) -> KafkaArgs {
    KafkaArgs {
        brokers: Some(brokers.to_string()),
        properties: std::env::var("KAFKA_PROPERTIES")
            .map(|p| p.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        topic_prefix,
        topics_file: None,
    }
}

/// Events for the raw producer and the HTTP floor, taken a batch at a time, in turn.
///
/// Each is its own event, with its own id and traceparent, as the ingress writes them: the
/// same hundred records sent again and again would make batches of copies, which lz4 and the
/// broker handle for less than real events. Their keys are those of the load's batch body, so
/// the partitions fill alike.
struct Pool {
    records: Vec<OutgoingRecord>,
    next: std::sync::atomic::AtomicUsize,
}

impl Pool {
    fn new(kafka: &KafkaArgs, events: usize) -> Self {
        Self {
            records: raw_records(kafka, events.div_ceil(BATCH) * BATCH),
            next: Default::default(),
        }
    }

    /// The next event alone, after the last taken alone.
    fn one(&self) -> &[OutgoingRecord] {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.records.len();
        &self.records[n..=n]
    }

    /// The next batch of BATCH events, after the last taken; the first again after the last.
    fn batch(&self) -> &[OutgoingRecord] {
        let batches = self.records.len() / BATCH;
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % batches;
        &self.records[n * BATCH..(n + 1) * BATCH]
    }
}

/// `count` events of the kind the load posts, encoded as the ingress encodes them, with the
/// headers it writes: the event's type and id, and a traceparent.
fn raw_records(kafka: &KafkaArgs, count: usize) -> Vec<OutgoingRecord> {
    let catalog = Arc::new(Catalog::embedded().unwrap());
    let codec = Codec::new(catalog.clone(), WireFormat::SingleObject);
    let schema = catalog.latest("order.placed").unwrap().clone();
    // One name shared by every record, as the ingress shares it.
    let topic: Arc<str> = kafka.topic("orders").into();
    (0..count)
        .map(|n| {
            let i = n % BATCH;
            let data = schema.validate(&order(i)["data"], "").unwrap();
            let now = jiff::Timestamp::now();
            let envelope = Envelope {
                event_id: uuid::Uuid::now_v7(),
                event_type: "order.placed".into(),
                occurred_at: now,
                received_at: now,
                actor: "bench".into(),
                source: "api".into(),
                idempotency_key: None,
            };
            let mut record = OutgoingRecord::event(
                topic.clone(),
                format!("o-{i}").into_bytes(),
                codec.encode(&schema, &envelope, &data).unwrap(),
                "order.placed",
                &envelope.event_id.to_string(),
                now.as_millisecond(),
            );
            let traceparent = format!("00-{}-{:016x}-01", uuid::Uuid::new_v4().simple(), n);
            record
                .headers
                .push(("traceparent".into(), traceparent.into_bytes()));
            record
        })
        .collect()
}

/// Starts this executable again as the HTTP floor (see the top of this file) on a free port
/// of its own; returns it once it answers, and its base URL.
async fn start_http_floor(brokers: &str, prefix: &str) -> (tokio::process::Child, String) {
    let port = free_port();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env("KAFKA_BROKERS", brokers)
        .env(FLOOR_LISTEN, format!("127.0.0.1:{port}"))
        .env(FLOOR_PREFIX, prefix)
        .kill_on_drop(true)
        .spawn()
        .expect("the HTTP floor starts");
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&reqwest::Client::new(), &base).await;
    (child, base)
}

/// Waits until the server at `base` answers its readiness check.
async fn wait_ready(client: &reqwest::Client, base: &str) {
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The HTTP floor's process: reads each posted body whole, publishes a batch of events
/// encoded beforehand, and answers 202 with as many bytes as the ingress's answer to a batch.
/// It checks nothing: what it costs is what reaching Kafka over HTTP costs before any of the
/// ingress's work.
async fn http_floor(listen: &str, kafka: KafkaArgs) {
    use axum::routing::{get, post};

    let publisher = Publisher::new(&kafka, Duration::from_secs(30)).unwrap();
    let records = Arc::new(Pool::new(&kafka, POOL));
    let answer = Bytes::from(answer_like(&kafka, BATCH));
    let single_answer = Bytes::from(answer_like(&kafka, 1));
    let publish = move |body: Bytes| {
        let (publisher, records) = (publisher.clone(), records.clone());
        // A batch's body is `{"events":[...]}`; anything else is one event.
        let batch = body.starts_with(br#"{"events""#);
        let answer = if batch {
            answer.clone()
        } else {
            single_answer.clone()
        };
        async move {
            let records = if batch {
                records.batch()
            } else {
                records.one()
            };
            // A failed publish answers 503, which stops the benchmark's load: a floor that
            // failed would measure nothing.
            let status = match publisher.publish_all(records).await {
                Ok(_) => axum::http::StatusCode::ACCEPTED,
                Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
            };
            let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
            (status, json, answer)
        }
    };
    let router = axum::Router::new()
        .route("/api/v1/events", post(publish))
        .route("/readyz", get(|| async { "ready" }));
    let listener = platform::http::bind(listen.parse().unwrap()).unwrap();
    let options = platform::http::ServeOptions {
        max_connections_per_address: usize::MAX,
        ..platform::http::ServeOptions::default()
    };
    platform::http::serve(listener, router, Default::default(), options)
        .await
        .unwrap();
}

/// An answer shaped as the ingress's to `events` events (a batch, or one), with offsets of a
/// busy topic.
fn answer_like(kafka: &KafkaArgs, events: usize) -> String {
    let answers: Vec<Value> = (0..events)
        .map(|i| {
            json!({"event_id": uuid::Uuid::now_v7(), "event_type": "order.placed",
                "topic": kafka.topic("orders"), "partition": i % 6, "offset": 1_234_567 + i})
        })
        .collect();
    if events == 1 {
        return answers[0].to_string();
    }
    json!({ "events": answers }).to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What `work` returns, and the most resident memory `pid` had while it ran (VmRSS, sampled
/// every 100 ms).
async fn max_rss_during<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (T, u64) {
    let mut work = std::pin::pin!(work);
    let mut max_kb = 0;
    loop {
        max_kb = max_kb.max(common::status_kb(pid, "VmRSS:"));
        tokio::select! {
            out = &mut work => return (out, max_kb),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// The raw producer: `in_flight` tasks publishing a batch of `records` `per_client` times each.
async fn raw_round(
    publisher: &Publisher,
    records: &Arc<Pool>,
    in_flight: usize,
    per_client: usize,
) {
    let (publisher, records) = (publisher.clone(), records.clone());
    in_parallel(in_flight, per_client, move || {
        let (publisher, records) = (publisher.clone(), records.clone());
        async move {
            publisher.publish_all(records.batch()).await.unwrap();
        }
    })
    .await;
}

/// The ingress: `in_flight` clients posting `body` `per_client` times each.
async fn batched_round(target: &Arc<Target>, body: &Bytes, in_flight: usize, per_client: usize) {
    let (target, body) = (target.clone(), body.clone());
    in_parallel(in_flight, per_client, move || {
        let (target, body) = (target.clone(), body.clone());
        async move { accepted(&target, &body).await }
    })
    .await;
}

/// `tasks` tasks, each awaiting `step()` `times` times in turn.
async fn in_parallel<F, Fut>(tasks: usize, times: usize, step: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let step = step.clone();
            tokio::spawn(async move {
                for _ in 0..times {
                    step().await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
}

/// Where the load goes: the ingress's events endpoint, with a token.
#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    url: String,
    token: String,
}

/// Sends `body` at `rate` requests per second for OPEN_LOOP_SECONDS (see `at_rate`).
async fn open_loop(target: &Arc<Target>, body: &Bytes, rate: f64) -> Outcome {
    at_rate(rate, || {
        let (target, body) = (target.clone(), body.clone());
        async move { served(&target, &body).await }
    })
    .await
}

/// Publishes a batch of `records` `rate` times per second for OPEN_LOOP_SECONDS (see `at_rate`).
async fn raw_open_loop(publisher: &Publisher, records: &Arc<Pool>, rate: f64) -> Outcome {
    at_rate(rate, || {
        let (publisher, records) = (publisher.clone(), records.clone());
        async move {
            // The floor is the broker's own latency: a failed publish would measure nothing.
            let published = publisher.publish_all(records.batch()).await;
            published.expect("the raw producer's publish failed");
            Answer::Accepted
        }
    })
    .await
}

/// Starts `step()` `rate` times per second for OPEN_LOOP_SECONDS, each at its intended time
/// whether or not earlier ones finished; each latency runs from that intended time, so time
/// spent queueing (in the client, the ingress or the broker) is counted, not hidden.
///
/// Past the ingress's maximum the late steps pile up in this client, each holding a
/// connection, and the process may not open more files than its limit. So at most
/// MAX_OUTSTANDING steps are under way; one due while they are is not sent and is counted
/// apart from what the ingress shed, as is one that could not open a connection (the
/// client's connection pool keeps connecting for a request that took another connection,
/// so while the ingress leaves connections in its accept queue, those pile up too).
/// Returns the latencies of the steps served, and how many were shed, never sent, could not
/// connect, or were reset.
async fn at_rate<F, Fut>(rate: f64, step: F) -> Outcome
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * OPEN_LOOP_SECONDS as f64) as usize;
    let outstanding = Arc::new(tokio::sync::Semaphore::new(MAX_OUTSTANDING));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let intended = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        let Ok(permit) = outstanding.clone().try_acquire_owned() else {
            continue;
        };
        let step = step();
        tasks.push(tokio::spawn(async move {
            let answer = step.await;
            let latency = intended.elapsed();
            drop(permit);
            (answer, latency)
        }));
    }
    let mut seen = Outcome {
        latencies: Vec::with_capacity(tasks.len()),
        shed: 0,
        unsent: total - tasks.len(),
        unconnected: 0,
        reset: 0,
    };
    for task in tasks {
        match task.await.unwrap() {
            (Answer::Accepted, latency) => seen.latencies.push(latency),
            (Answer::Shed, _) => seen.shed += 1,
            (Answer::Unconnected, _) => seen.unconnected += 1,
            (Answer::Reset, _) => seen.reset += 1,
        }
    }
    seen
}

/// What became of one request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Accepted,
    /// 503 overloaded: the ingress's in-flight budget was full.
    Shed,
    /// The client could not open a connection (its file limit).
    Unconnected,
    /// The connection was reset before an answer came: past the ingress's accept queue, the
    /// kernel may drop a connection the client believes open.
    Reset,
}

/// What an open loop saw.
struct Outcome {
    latencies: Vec<Duration>,
    shed: usize,
    unsent: usize,
    unconnected: usize,
    reset: usize,
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    (
        percentile(samples, 0.50),
        percentile(samples, 0.99),
        percentile(samples, 0.999),
    )
}

/// Posts and insists on a 202: a closed loop never holds more than the ingress admits.
async fn accepted(target: &Target, body: &Bytes) {
    let answer = served(target, body).await;
    assert_eq!(answer, Answer::Accepted, "a closed loop's request");
}

/// Posts: a 202 is accepted, a 503 overloaded shed, and a connection the client could not
/// open or saw reset is counted as such; anything else stops the benchmark, as a benchmark of
/// failures would measure nothing.
async fn served(target: &Target, body: &Bytes) -> Answer {
    let sent = target
        .client
        .post(&target.url)
        .bearer_auth(&target.token)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) if err.is_connect() => return Answer::Unconnected,
        Err(err) if was_reset(&err) => return Answer::Reset,
        Err(err) => panic!("{err:?}"),
    };
    let status = response.status();
    // Read to the end, as a client does: a connection with an unread answer is not reused.
    let answer = response.bytes().await.unwrap();
    let shed = status == 503 && answer.windows(10).any(|w| w == b"overloaded");
    assert!(
        status == 202 || shed,
        "{status} {}",
        String::from_utf8_lossy(&answer)
    );
    if status == 202 {
        Answer::Accepted
    } else {
        Answer::Shed
    }
}

/// Whether a request failed on a connection reset by the ingress's side.
/// Whether the connection was reset, or closed before an answer came: under overload the
/// ingress closes a connection whose request does not arrive within its deadlines (the
/// handshake and header timeouts), and the client may have written its request by then.
fn was_reset(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionReset;
        }
        if format!("{cause:?}").contains("IncompleteMessage") {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The `q` quantile of `samples`, which it sorts.
fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}
