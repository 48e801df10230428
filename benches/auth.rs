//! The costs of authentication and of the edge, in one run:
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 [REDIS_URL=redis://127.0.0.1:6379] cargo bench --bench auth
//!
//! 1. token verification: what `platform::auth` spends on an RS256 token (the auth service's,
//!    its key from a JWKS), an ES256 one and an HS256 one, in process: the first time it sees a
//!    token (the signature is checked) and afterwards (remembered until its `exp`);
//! 2. the rate limiter's cost: the real `herald ingress` with limits counted in process (and
//!    in Redis when REDIS_URL is set), against the same binary with RATE_LIMITS_OFF,
//!    alternating rounds of single-event requests (from 32 clients, then from 256) and of
//!    batches of 100; a second limits-off process, the control, shows how far two identical
//!    processes differ in the same run. BENCH_CLIENTS (`32,256`) and BENCH_ROUNDS (5) change
//!    the loads and the rounds;
//! 3. login latency: `herald auth` (SQLite), argon2id at m=19456 KiB, t=2, p=1; one client
//!    signing in over and over, then four at once.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use auth::tokens::{Issuer, StoredKey};
use platform::auth::{AuthArgs, Authenticator, JwksSource};
use serde_json::{Value, json};

const VERIFICATIONS: usize = 50_000;
const FRESH_TOKENS: usize = 5_000;
const ROUNDS: usize = 5;
const SINGLE_SECONDS: u64 = 8;
const BATCHED_EVENTS: usize = 20_000;
const LOGINS: usize = 300;

struct FixedJwks(Vec<u8>);

#[async_trait::async_trait]
impl JwksSource for FixedJwks {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        Ok(self.0.clone())
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Microseconds per verification of `token`, median of three runs.
fn verify_cost(auth: &Authenticator, token: &str) -> f64 {
    let mut runs: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..VERIFICATIONS {
                std::hint::black_box(auth.verify(std::hint::black_box(token)).unwrap());
            }
            t.elapsed().as_secs_f64() * 1e6 / VERIFICATIONS as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[1]
}

/// Microseconds per token when each is verified once.
fn first_use_cost(auth: &Authenticator, tokens: &[String]) -> f64 {
    let t = Instant::now();
    for token in tokens {
        std::hint::black_box(auth.verify(token).unwrap());
    }
    t.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64
}

fn order(i: usize) -> Value {
    json!({"type": "order.placed", "data": {"order_id": format!("o-{i}"), "customer_id": "alice",
        "items": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}], "total_cents": 900, "currency": "EUR"}})
}

/// Single events from `clients` clients for SINGLE_SECONDS: requests per second.
async fn single_rate(client: &reqwest::Client, base: &str, token: &str, clients: usize) -> f64 {
    let body = Arc::new(order(1).to_string());
    let until = Instant::now() + Duration::from_secs(SINGLE_SECONDS);
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, token, body) = (
                client.clone(),
                format!("{base}/api/v1/events"),
                token.to_string(),
                body.clone(),
            );
            tokio::spawn(async move {
                let mut sent = 0usize;
                while Instant::now() < until {
                    let r = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(body.as_bytes().to_vec())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202);
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap();
    }
    sent as f64 / t.elapsed().as_secs_f64()
}

/// Batches of 100 from 8 clients: events per second.
async fn batched_rate(client: &reqwest::Client, base: &str, token: &str) -> f64 {
    let batches: Vec<Value> = (0..BATCHED_EVENTS / 100)
        .map(|b| json!({"events": (0..100).map(|i| order(b * 100 + i)).collect::<Vec<_>>()}))
        .collect();
    let t = Instant::now();
    common::post_batches(client, base, &batches, |_| token.to_string()).await;
    BATCHED_EVENTS as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let redis = std::env::var("REDIS_URL").ok();

    // 1. Token verification: the auth service's RS256 tokens, its key from a JWKS.
    let hs = Authenticator::from_args(&AuthArgs::hs256(common::SECRET)).unwrap();
    let hs_token = common::token("bench", "user");
    let key = StoredKey::generate(0, 0);
    let jwks = auth::tokens::jwks(&[&key]).to_string().into_bytes();
    let mut svc_args = AuthArgs::hs256(common::SECRET);
    svc_args.jwt_hs256_secret = None;
    let svc = Authenticator::from_static_args(&svc_args)
        .unwrap()
        .with_jwks_source(&svc_args, Arc::new(FixedJwks(jwks)));
    let issuer = Issuer {
        issuer: "herald".into(),
        audience: "herald".into(),
        ttl: Duration::from_secs(3600),
    };
    let svc_token = issuer.access_token(&key, "bench", "user", now()).unwrap();
    while svc.verify(&svc_token).is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let svc_us = verify_cost(&svc, &svc_token);
    let hs_us = verify_cost(&hs, &hs_token);
    // Each token once: the signature is checked every time.
    let fresh: Vec<String> = (0..FRESH_TOKENS)
        .map(|i| {
            issuer
                .access_token(&key, &format!("user-{i}"), "user", now())
                .unwrap()
        })
        .collect();
    let svc_fresh_us = first_use_cost(&svc, &fresh);
    let fresh: Vec<String> = (0..FRESH_TOKENS)
        .map(|i| common::token(&format!("user-{i}"), "user"))
        .collect();
    let hs_fresh_us = first_use_cost(&hs, &fresh);
    // ES256 for comparison: platform's test JWKS (key ec-1, P-256).
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/platform/tests/keys");
    let mut es_args = svc_args.clone();
    es_args.jwt_jwks_file = Some(keys.join("jwks.json"));
    let es = Authenticator::from_args(&es_args).unwrap();
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(
        &std::fs::read(keys.join("ec-private.pem")).unwrap(),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("ec-1".into());
    let fresh: Vec<String> = (0..FRESH_TOKENS)
        .map(|i| {
            let claims = json!({"sub": format!("user-{i}"), "roles": ["user"], "iss": "herald", "aud": "herald", "exp": now() + 3600});
            jsonwebtoken::encode(&header, &claims, &ec).unwrap()
        })
        .collect();
    let es_fresh_us = first_use_cost(&es, &fresh);
    println!(
        "token verification, first use of a token: RS256 2048 (the auth service's, JWKS, kid) {svc_fresh_us:.1} µs, \
         ES256 (JWKS, kid) {es_fresh_us:.1} µs, HS256 {hs_fresh_us:.1} µs; \
         a token seen before: RS256 {svc_us:.2} µs, HS256 {hs_us:.2} µs"
    );

    // The in-process counter alone.
    let counters = platform::edge::rate::LocalCounters::default();
    let window = Duration::from_secs(60);
    let t = Instant::now();
    for i in 0..1_000_000u64 {
        let key = format!("herald:rl:user:60:u:bench-{}", i % 64);
        std::hint::black_box(counters.hit(&key, window, Instant::now()));
    }
    println!(
        "in-process rate-limit counter: {:.0} ns per request (key built, counted)",
        t.elapsed().as_nanos() as f64 / 1e6
    );

    // 2. The limiter's cost at the ingress.
    let prefix = format!("bench{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let data = std::env::temp_dir().join(format!(
        "herald-bench-auth-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut variants: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("limits off", vec![("RATE_LIMITS_OFF", "true".into())]),
        ("limits in process", vec![]),
    ];
    // A second process with limits off, measured like the others: how far two identical
    // processes differ in one run is the smallest difference the others can show.
    variants.push((
        "limits off, control",
        vec![("RATE_LIMITS_OFF", "true".into())],
    ));
    if let Some(redis) = &redis {
        variants.push(("limits in Redis", vec![("REDIS_URL", redis.clone())]));
    }
    let mut running = Vec::new();
    for (i, (name, extra)) in variants.iter().enumerate() {
        let dir = data.join(i.to_string());
        let mut env: Vec<(&str, String)> = vec![
            ("KAFKA_BROKERS", brokers.clone()),
            ("TOPIC_PREFIX", prefix.clone()),
            ("HERALD_DATA_DIR", dir.display().to_string()),
            ("RATE_LIMIT_USER", "1000000000/1m".into()),
        ];
        env.extend(extra.iter().cloned());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (child, base) = common::herald("ingress", &env).await;
        running.push((*name, child, base));
    }
    // Single events at two loads: 32 clients leave the machine half idle, so the rate is
    // bound by each request's latency (and shows the limiter's round trip); 256 keep every
    // core busy, so the rate is the ingress's capacity (and shows the limiter's CPU).
    let loads: Vec<usize> = std::env::var("BENCH_CLIENTS").map_or(vec![32, 256], |v| {
        v.split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("BENCH_CLIENTS: numbers, comma-separated")
            })
            .collect()
    });
    let rounds = common::setting("BENCH_ROUNDS", ROUNDS as u64) as usize;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(*loads.iter().max().unwrap())
        .build()
        .unwrap();
    let mut single: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); running.len()]; loads.len()];
    let mut cpu: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); running.len()]; loads.len()];
    let mut batched: Vec<Vec<f64>> = vec![Vec::new(); running.len()];
    for round in 0..rounds {
        // Each round starts with another variant, so no variant always runs first.
        for step in 0..running.len() {
            let i = (round + step) % running.len();
            let (_, child, base) = &running[i];
            let pid = child.id().unwrap();
            // A caller per round and variant: every request is counted, none refused. A
            // service, which may publish orders of any customer.
            let token = common::token(&format!("bench-{round}-{i}"), "service");
            for (load, &clients) in loads.iter().enumerate() {
                let before = common::cpu_seconds(pid);
                let rate = single_rate(&client, base, &token, clients).await;
                let used = common::cpu_seconds(pid) - before;
                single[load][i].push(rate);
                cpu[load][i].push(used * 1e6 / (rate * SINGLE_SECONDS as f64));
            }
            batched[i].push(batched_rate(&client, base, &token).await);
        }
    }
    for (load, clients) in loads.iter().enumerate() {
        let off_single = common::median(&single[load][0]);
        let off_cpu = common::median(&cpu[load][0]);
        for (i, (name, _, _)) in running.iter().enumerate() {
            let rounds: Vec<String> = single[load][i].iter().map(|r| format!("{r:.0}")).collect();
            let s = common::median(&single[load][i]);
            let c = common::median(&cpu[load][i]);
            println!(
                "ingress, {name}, single events from {clients} clients: {s:.0} requests/s ({:.1}% of off), \
                 {c:.1} µs CPU per request ({:+.1}); rounds {}",
                s / off_single * 100.0,
                c - off_cpu,
                rounds.join(" "),
            );
        }
    }
    let off_batched = common::median(&batched[0]);
    for (i, (name, _, _)) in running.iter().enumerate() {
        let b = common::median(&batched[i]);
        println!(
            "ingress, {name}, batches of 100: {b:.0} events/s ({:.1}% of off)",
            b / off_batched * 100.0
        );
    }
    drop(running);

    // 3. Login latency.
    let (_auth, base) = common::herald(
        "auth",
        &[
            ("KAFKA_BROKERS", &brokers),
            ("TOPIC_PREFIX", &prefix),
            ("HERALD_DATA_DIR", &data.join("auth").display().to_string()),
            ("RATE_LIMIT_ANONYMOUS", "1000000000/1m"),
            // Logins are the measure here, not what limits them.
            ("RATE_LIMIT_ROUTES", "POST /api/v1/auth/login=1000000000/1m"),
            ("LOGIN_LIMIT_PER_ACCOUNT", "1000000000/1m"),
        ],
    )
    .await;
    let password = "correct horse battery staple";
    let login_body = |email: &str| json!({"email": email, "password": password});
    for i in 0..4 {
        let r = client
            .post(format!("{base}/api/v1/auth/register"))
            .json(&json!({"email": format!("bench{i}@example.com"), "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let login = |email: String| {
        let (client, url, body) = (
            client.clone(),
            format!("{base}/api/v1/auth/login"),
            login_body(&email),
        );
        async move {
            let mut took = Vec::new();
            for _ in 0..LOGINS {
                let t = Instant::now();
                let r = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                took.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            took
        }
    };
    let mut alone = login("bench0@example.com".into()).await;
    alone.sort_by(f64::total_cmp);
    let t = Instant::now();
    let together =
        futures_util::future::join_all((0..4).map(|i| login(format!("bench{i}@example.com"))))
            .await;
    let rate = (4 * LOGINS) as f64 / t.elapsed().as_secs_f64();
    let mut together: Vec<f64> = together.into_iter().flatten().collect();
    together.sort_by(f64::total_cmp);
    println!(
        "login (argon2id m=19456 KiB t=2 p=1): one client p50 {:.1} ms p99 {:.1} ms; four clients p50 {:.1} ms p99 {:.1} ms, {rate:.1} logins/s",
        common::percentile(&alone, 0.5),
        common::percentile(&alone, 0.99),
        common::percentile(&together, 0.5),
        common::percentile(&together, 0.99),
    );
    let _ = std::fs::remove_dir_all(&data);
}
