//! The auth service and the edge, as users run them: `herald auth` and `herald ingress`
//! processes on a real broker, PostgreSQL and Redis.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::process::HeraldProcess;
use support::{client, token};

const PASSWORD: &str = "correct horse battery staple";

async fn post(base: &str, path: &str, body: &Value, bearer: Option<&str>) -> reqwest::Response {
    let mut request = client().post(format!("{base}{path}")).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The status of an anonymous POST.
async fn status(base: &str, path: &str, body: &Value) -> StatusCode {
    post(base, path, body, None).await.status()
}

async fn get(base: &str, path: &str, bearer: &str) -> reqwest::Response {
    client()
        .get(format!("{base}{path}"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

async fn register(base: &str, email: &str, phone: Option<&str>) -> Value {
    let response = post(
        base,
        "/api/v1/auth/register",
        &json!({"email": email, "password": PASSWORD, "display_name": "Tester", "phone": phone}),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn login(base: &str, email: &str) -> Value {
    let response = post(
        base,
        "/api/v1/auth/login",
        &json!({"email": email, "password": PASSWORD}),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn unique_email(name: &str) -> String {
    format!(
        "{name}-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn unique_phone() -> String {
    format!("+1555{:07}", rand_digits())
}

fn rand_digits() -> u32 {
    (uuid::Uuid::new_v4().as_u128() % 10_000_000) as u32
}

/// Polls `check` until it gives a value, for at most a minute.
async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    support::eventually(Duration::from_secs(60), what, || async {
        check().await.ok_or("nothing yet")
    })
    .await
}

/// The data of the first event on `aggregate` that `pick` accepts.
async fn event_data(
    kafka: &platform::kafka::KafkaArgs,
    aggregate: &str,
    pick: impl Fn(&events::Decoded) -> bool,
) -> Value {
    wait_for(aggregate, || async {
        support::read(kafka, aggregate)
            .await
            .into_iter()
            .map(|(_, d)| d)
            .find(|d| pick(d))
            .map(support::opened)
    })
    .await
}

/// Verifies the phone of the account signed in with `access`, as its owner does: the code
/// texted to the phone comes back.
async fn verify_phone(
    base: &str,
    kafka: &platform::kafka::KafkaArgs,
    access: &str,
    phone: &str,
) -> Value {
    // The account's own codes: one account's events share a partition, so they come in order
    // (another account's, on another partition, may come before or after).
    let me: Value = get(base, "/api/v1/me", access).await.json().await.unwrap();
    let mine = |code: &(String, String)| code.0 == me["id"].as_str().unwrap_or_default();
    let before = codes_of(kafka, phone, "verify_phone")
        .await
        .iter()
        .filter(|c| mine(c))
        .count();
    let asked = post(
        base,
        "/api/v1/me/phone/verification",
        &json!({}),
        Some(access),
    )
    .await;
    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    let code = wait_for("the verification code", || async {
        let codes = codes_of(kafka, phone, "verify_phone").await;
        let mut mine = codes.into_iter().filter(|c| mine(c));
        mine.nth(before).map(|(_, code)| code)
    })
    .await;
    post(
        base,
        "/api/v1/me/phone/verify",
        &json!({"code": code}),
        Some(access),
    )
    .await
    .json()
    .await
    .unwrap()
}

/// The codes texted to `phone` for `purpose` so far, with the account each is for, opened as
/// the SMS sender opens them.
async fn codes_of(
    kafka: &platform::kafka::KafkaArgs,
    phone: &str,
    purpose: &str,
) -> Vec<(String, String)> {
    support::read(kafka, "otp")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d.data["phone"] == phone && d.data["purpose"] == purpose)
        .map(|d| {
            let data = support::opened(d);
            let user = data["user_id"].as_str().unwrap().to_string();
            (user, data["code"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The codes texted to `phone` for `purpose` so far.
async fn codes(kafka: &platform::kafka::KafkaArgs, phone: &str, purpose: &str) -> Vec<String> {
    codes_of(kafka, phone, purpose)
        .await
        .into_iter()
        .map(|(_, code)| code)
        .collect()
}

/// The first code texted to `phone` for `purpose`.
async fn texted(kafka: &platform::kafka::KafkaArgs, phone: &str, purpose: &str) -> String {
    wait_for("a code", || async {
        codes(kafka, phone, purpose).await.first().cloned()
    })
    .await
}

/// A token like the auth service's, but with its payload changed after signing.
fn tampered(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["roles"] = json!(["admin"]);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn hs256(claims: &Value, secret: &[u8], kid: Option<&str>) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn accounts_sessions_and_forged_tokens() {
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let auth = HeraldProcess::start("auth", &kafka, &database, &[]).await;
    let jwks_url = format!("{}/.well-known/jwks.json", auth.base);
    let ingress = HeraldProcess::start(
        "ingress",
        &kafka,
        &database,
        &[("JWT_JWKS_URL", &jwks_url), ("JWT_JWKS_REFRESH_SECS", "1")],
    )
    .await;

    // Registration: the role in the body is ignored; bad input is refused precisely.
    let alice_email = unique_email("alice");
    let response = post(
        &auth.base,
        "/api/v1/auth/register",
        &json!({"email": alice_email, "password": PASSWORD, "role": "admin"}),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let alice: Value = response.json().await.unwrap();
    assert_eq!(alice["role"], "user");
    let alice_id = alice["id"].as_str().unwrap().to_string();
    for (body, status, says) in [
        (
            json!({"email": alice_email, "password": PASSWORD}),
            409,
            "exists",
        ),
        (
            json!({"email": unique_email("w"), "password": "short"}),
            422,
            "at least 10",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            422,
            "not an email",
        ),
        (
            json!({"email": unique_email("w")}),
            400,
            "missing field `password`",
        ),
        (
            json!({"email": unique_email("w"), "password": PASSWORD, "time_zone": "Mars/Base"}),
            422,
            "time zone",
        ),
    ] {
        let response = post(&auth.base, "/api/v1/auth/register", &body, None).await;
        assert_eq!(response.status().as_u16(), status, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert!(problem.to_string().contains(says), "{problem}");
    }
    let huge = json!({"email": unique_email("big"), "password": "x".repeat(100_000)});
    assert_eq!(
        post(&auth.base, "/api/v1/auth/register", &huge, None)
            .await
            .status(),
        413
    );

    // Sign in; the token works at the ingress, which learnt the key from the JWKS.
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/login",
            &json!({"email": alice_email, "password": "wrong password!"})
        )
        .await,
        401
    );
    let session = login(&auth.base, &alice_email).await;
    let access = session["access_token"].as_str().unwrap().to_string();
    let me: Value = get(&auth.base, "/api/v1/me", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], alice_id.as_str());
    let order = support::order_of("o-auth-1", &alice_id);
    wait_for("the ingress to trust the auth service's key", || async {
        let status = post(&ingress.base, "/api/v1/events", &order, Some(&access))
            .await
            .status();
        (status == StatusCode::ACCEPTED).then_some(())
    })
    .await;

    // Forged and broken tokens get 401 at the ingress.
    let header_json =
        |alg: &str| URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let claims = json!({"sub": alice_id, "roles": ["admin"], "iss": "herald", "aud": "herald", "exp": now() + 600});
    let none = format!(
        "{}.{}.",
        header_json("none"),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let jwks: Value = client()
        .get(&jwks_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = &jwks["keys"][0];
    // The classic confusion: the published public key used as an HMAC secret.
    let modulus = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let confused = hs256(&claims, &modulus, jwk["kid"].as_str());
    let with = |patch: Value| {
        let mut c = claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        hs256(&c, support::SECRET.as_bytes(), None)
    };
    let stranger_key = {
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("es256-unknown".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(pair.as_ref()),
        )
        .unwrap()
    };
    for (name, forged) in [
        ("alg none", none),
        ("HS256 signed with the public key", confused),
        ("expired", with(json!({"exp": now() - 300}))),
        ("nbf in the future", with(json!({"nbf": now() + 600}))),
        ("wrong iss", with(json!({"iss": "someone-else"}))),
        ("wrong aud", with(json!({"aud": "someone-else"}))),
        ("tampered payload", tampered(&access)),
        ("unknown kid", stranger_key),
    ] {
        let status = post(&ingress.base, "/api/v1/events", &order, Some(&forged))
            .await
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
    }

    // Another user's account: 403, never the data.
    let bob_email = unique_email("bob");
    register(&auth.base, &bob_email, None).await;
    let bob = login(&auth.base, &bob_email).await;
    let bob_access = bob["access_token"].as_str().unwrap();
    let peek = get(&auth.base, &format!("/api/v1/users/{alice_id}"), bob_access).await;
    assert_eq!(peek.status(), 403);
    assert!(!peek.text().await.unwrap().contains(&alice_email));
    let promote = client()
        .put(format!(
            "{}/api/v1/admin/users/{}/role",
            auth.base,
            bob["user_id"].as_str().unwrap()
        ))
        .bearer_auth(bob_access)
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(promote.status(), 403);
    let own = get(&auth.base, &format!("/api/v1/users/{alice_id}"), &access).await;
    assert_eq!(own.status(), 200);

    // Refresh rotates; reusing a used token revokes the whole family.
    let first = session["refresh_token"].as_str().unwrap();
    let rotated = post(
        &auth.base,
        "/api/v1/auth/refresh",
        &json!({"refresh_token": first}),
        None,
    )
    .await;
    assert_eq!(rotated.status(), 200);
    let second: Value = rotated.json().await.unwrap();
    let second = second["refresh_token"].as_str().unwrap().to_string();
    let replay = post(
        &auth.base,
        "/api/v1/auth/refresh",
        &json!({"refresh_token": first}),
        None,
    )
    .await;
    assert_eq!(replay.status(), 401);
    assert!(replay.text().await.unwrap().contains("used before"));
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/refresh",
            &json!({"refresh_token": second})
        )
        .await,
        401,
        "the family was not revoked"
    );

    // Logout revokes.
    let session = login(&auth.base, &alice_email).await;
    let refresh = session["refresh_token"].as_str().unwrap();
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/logout",
            &json!({"refresh_token": refresh})
        )
        .await,
        204
    );
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/refresh",
            &json!({"refresh_token": refresh})
        )
        .await,
        401
    );

    // Profile update and soft delete publish their events; a deleted account cannot sign in.
    let patched = client()
        .patch(format!("{}/api/v1/me", auth.base))
        .bearer_auth(&access)
        .json(&json!({"display_name": "Alice B."}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let deleted = client()
        .delete(format!("{}/api/v1/me", auth.base))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/login",
            &json!({"email": alice_email, "password": PASSWORD})
        )
        .await,
        401
    );

    let seen: Vec<(String, String)> = wait_for("the user events", || async {
        let seen: Vec<(String, String)> = support::read(&kafka, "users")
            .await
            .into_iter()
            .map(|(_, d)| {
                (
                    d.envelope.event_type.clone(),
                    d.data["user_id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        (seen.len() >= 5).then_some(seen)
    })
    .await;
    let alice_events: Vec<&str> = seen
        .iter()
        .filter(|(_, u)| *u == alice_id)
        .map(|(t, _)| t.as_str())
        .collect();
    // Deleting one's account erases one's data: the deletion, then the erasure.
    assert_eq!(
        alice_events,
        [
            "user.registered",
            "user.profile_updated",
            "user.deleted",
            "user.erased"
        ]
    );
    assert_eq!(
        seen.iter().filter(|(t, _)| t == "user.registered").count(),
        2
    );
    ingress.kill9().await;
    auth.kill9().await;
}

#[tokio::test]
async fn the_sixth_otp_attempt_is_refused_from_any_ip() {
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let auth = HeraldProcess::start(
        "auth",
        &kafka,
        &database,
        &[("TRUSTED_PROXIES", "127.0.0.1")],
    )
    .await;
    let phone = unique_phone();
    let email = unique_email("otp");
    register(&auth.base, &email, Some(&phone)).await;
    let access = login(&auth.base, &email).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        verify_phone(&auth.base, &kafka, &access, &phone).await["phone_verified"],
        true
    );
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/otp/request",
            &json!({"phone": phone})
        )
        .await,
        202
    );
    let code = texted(&kafka, &phone, "login").await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for attempt in 1..=5 {
        let response = client()
            .post(format!("{}/api/v1/auth/otp/verify", auth.base))
            .header("x-forwarded-for", format!("203.0.113.{attempt}"))
            .json(&json!({"phone": phone, "code": wrong}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "attempt {attempt}");
    }
    // The sixth, from yet another address and with the right code, is refused.
    let sixth = client()
        .post(format!("{}/api/v1/auth/otp/verify", auth.base))
        .header("x-forwarded-for", "198.51.100.9")
        .json(&json!({"phone": phone, "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(sixth.status(), 429);
    let retry: u64 = sixth.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry), "Retry-After {retry}");

    // Another account is not affected, and a right code signs in once.
    let phone2 = unique_phone();
    let email2 = unique_email("otp2");
    register(&auth.base, &email2, Some(&phone2)).await;
    let access2 = login(&auth.base, &email2).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    verify_phone(&auth.base, &kafka, &access2, &phone2).await;
    post(
        &auth.base,
        "/api/v1/auth/otp/request",
        &json!({"phone": phone2}),
        None,
    )
    .await;
    let code2 = texted(&kafka, &phone2, "login").await;
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/otp/verify",
            &json!({"phone": phone2, "code": code2})
        )
        .await,
        200
    );
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/otp/verify",
            &json!({"phone": phone2, "code": code2})
        )
        .await,
        401,
        "a code works once"
    );
    auth.kill9().await;
}

#[tokio::test]
async fn two_ingress_processes_sharing_redis_enforce_one_limit() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let env = [("REDIS_URL", redis.as_str()), ("RATE_LIMIT_USER", "10/1m")];
    let a = HeraldProcess::start("ingress", &kafka, &database, &env).await;
    let b = HeraldProcess::start("ingress", &kafka, &database, &env).await;
    let user = format!("limited-{}", uuid::Uuid::new_v4().simple());
    let bearer = token(&user, &["user"]);
    let order = support::order_of("o-limit", &user);
    for i in 0..10 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let response = post(base, "/api/v1/events", &order, Some(&bearer)).await;
        assert_eq!(response.status(), 202, "request {}", i + 1);
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            (9 - i).to_string().as_str()
        );
        assert_eq!(response.headers()["ratelimit-limit"], "10");
        assert_eq!(response.headers()["ratelimit-policy"], "10;w=60");
    }
    for base in [&a.base, &b.base] {
        let refused = post(base, "/api/v1/events", &order, Some(&bearer)).await;
        assert_eq!(refused.status(), 429);
        let retry: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json"
        );
    }
    // Another user has a budget of their own.
    let other_user = format!("other-{}", uuid::Uuid::new_v4().simple());
    let other = token(&other_user, &["user"]);
    assert_eq!(
        post(
            &a.base,
            "/api/v1/events",
            &support::order_of("o-limit", &other_user),
            Some(&other)
        )
        .await
        .status(),
        202
    );
    // At once, from both processes: hits counted together in one Redis call still get a
    // count each, so exactly the limit passes and each remaining count is given out once.
    let crowd_user = format!("crowd-{}", uuid::Uuid::new_v4().simple());
    let crowd = token(&crowd_user, &["user"]);
    let crowd_order = support::order_of("o-crowd", &crowd_user);
    let sends = (0..60).map(|i| {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        post(base, "/api/v1/events", &crowd_order, Some(&crowd))
    });
    let mut remaining = Vec::new();
    let mut refused = 0;
    for response in futures_util::future::join_all(sends).await {
        match response.status() {
            StatusCode::ACCEPTED => remaining.push(
                response.headers()["ratelimit-remaining"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            ),
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<u64>>());
    assert_eq!(refused, 50);
    // Over the limit the answer is 429 before anything else: for a body that does not
    // validate, and for a request that only validates.
    let invalid = json!({"type": "order.placed", "data": {"order_id": 7}});
    let over = post(&a.base, "/api/v1/events", &invalid, Some(&crowd)).await;
    assert_eq!(over.status(), 429);
    let over = post(
        &b.base,
        "/api/v1/events?validate_only=true",
        &order,
        Some(&crowd),
    )
    .await;
    assert_eq!(over.status(), 429);
    // And nothing refused was published: exactly the limit per user is in the topic.
    let published = support::read(&kafka, "orders").await;
    for user in [&user, crowd_user.as_str()] {
        let theirs = published
            .iter()
            .filter(|(_, d)| d.envelope.actor == *user)
            .count();
        assert_eq!(theirs, 10, "events published for {user}");
    }
    a.kill9().await;
    b.kill9().await;
}

/// A Redis of this test's own, to pause: `kill -STOP` and `kill -CONT` on its process.
struct PausableRedis {
    process: tokio::process::Child,
    url: String,
}

impl PausableRedis {
    async fn start() -> Self {
        Self::start_with_user(None).await
    }

    /// With a user (name, password), the default user is off and the URL signs in as it.
    async fn start_with_user(user: Option<(&str, &str)>) -> Self {
        let port = {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            free.local_addr().unwrap().port()
        };
        let process = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(user.into_iter().flat_map(|(name, password)| {
                let user = vec![
                    "--user".into(),
                    name.into(),
                    "on".into(),
                    format!(">{password}"),
                ];
                let rights = ["~*", "+@all", "--user", "default", "off"];
                user.into_iter().chain(rights.map(String::from))
            }))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (infra/scripts/services.sh installs it)");
        support::eventually(Duration::from_secs(5), "redis-server listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
        })
        .await;
        let credentials = user
            .map(|(name, password)| format!("{name}:{password}@"))
            .unwrap_or_default();
        Self {
            process,
            url: format!("redis://{credentials}127.0.0.1:{port}"),
        }
    }

    /// A Redis of its own, an ingress counting there with a limit of 1000 a minute, and a
    /// token for a user of its own.
    async fn with_ingress(who: &str) -> (Self, HeraldProcess, String) {
        let redis = Self::start().await;
        let kafka = support::kafka(&support::brokers().await);
        let database = support::audit::fresh_postgres().await;
        let env = [
            ("REDIS_URL", redis.url.as_str()),
            ("RATE_LIMIT_USER", "1000/1m"),
        ];
        let ingress = HeraldProcess::start("ingress", &kafka, &database, &env).await;
        // A service: it may publish any customer's orders, and is counted like a user.
        let bearer = token(
            &format!("{who}-{}", uuid::Uuid::new_v4().simple()),
            &["service"],
        );
        (redis, ingress, bearer)
    }

    fn signal(&self, signal: &str) {
        let pid = self.process.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

/// The limiter signs in as the URL's user to a Redis whose default user is off, and counts
/// in the URL's database, not in database 0; a wrong password stops it at start, saying why.
#[tokio::test]
async fn counters_sign_in_as_the_urls_user_and_use_its_database() {
    let redis = PausableRedis::start_with_user(Some(("herald", "s3cret"))).await;
    let url = format!("{}/2", redis.url);
    let wrong = redis.url.replace("s3cret", "nope");
    let refused = platform::edge::rate::RedisCounters::connect(&wrong).await;
    let err = refused.err().expect("a wrong password is refused");
    assert!(err.to_string().contains("WRONGPASS"), "{err}");
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let env = [("REDIS_URL", url.as_str()), ("RATE_LIMIT_USER", "1000/1m")];
    let ingress = HeraldProcess::start("ingress", &kafka, &database, &env).await;
    let bearer = token("signed-in", &["user"]);
    let response = post(
        &ingress.base,
        "/api/v1/events",
        &support::order_of("o-signed-in", "signed-in"),
        Some(&bearer),
    )
    .await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.headers().get("ratelimit-remaining").unwrap(),
        "999"
    );
    let port = redis.url.rsplit(':').next().unwrap();
    let keys = |database: &str| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", port, "--user", "herald", "--pass", "s3cret"])
            .args(["--no-auth-warning", "-n", database])
            .arg("DBSIZE")
            .output()
            .expect("redis-cli (installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!((keys("2"), keys("0")), ("1".into(), "0".into()));
    ingress.kill9().await;
}

/// Redis closing the edge's idle connection (a restart, its client `timeout`) costs no
/// request its count: the first hit after it finds the link dead and is counted on a new one,
/// instead of passing uncounted with a second of uncounted requests after it.
#[tokio::test]
async fn a_connection_that_redis_closed_is_replaced_without_an_uncounted_request() {
    let (redis, ingress, bearer) = PausableRedis::with_ingress("closed").await;
    let order = support::order("o-closed");
    for expected in [999, 998] {
        let response = post(&ingress.base, "/api/v1/events", &order, Some(&bearer)).await;
        assert_eq!(response.status(), 202);
        assert_eq!(
            response.headers().get("ratelimit-remaining").unwrap(),
            &expected.to_string()
        );
        // every client but redis-cli itself: the edge's connection
        let killed = std::process::Command::new("redis-cli")
            .args(["-u", &redis.url, "CLIENT", "KILL", "TYPE", "normal"])
            .output()
            .expect("redis-cli (installed with redis-server)");
        assert_eq!(String::from_utf8_lossy(&killed.stdout).trim(), "1");
    }
    let response = post(&ingress.base, "/api/v1/events", &order, Some(&bearer)).await;
    assert_eq!(
        response.headers().get("ratelimit-remaining").unwrap(),
        "997"
    );
    ingress.kill9().await;
}

/// Requests while Redis answers nothing are let through (availability first), and after the
/// first one times out the edge stops asking for a moment: the paused Redis receives almost
/// none of the hits, which it would count all at once when it wakes.
#[tokio::test]
async fn a_redis_that_stops_answering_lets_requests_through_without_queueing_on_it() {
    let (redis, ingress, bearer) = PausableRedis::with_ingress("paused").await;
    let order = support::order("o-paused");
    let remaining = |response: &reqwest::Response| {
        response
            .headers()
            .get("ratelimit-remaining")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
    };
    let counted = post(&ingress.base, "/api/v1/events", &order, Some(&bearer)).await;
    assert_eq!(remaining(&counted), Some(999));

    redis.signal("-STOP");
    for i in 0..20 {
        let response = post(&ingress.base, "/api/v1/events", &order, Some(&bearer)).await;
        assert_eq!(response.status(), 202, "request {i} with Redis paused");
    }
    redis.signal("-CONT");

    // Counting resumes once the edge asks Redis again; what the paused Redis was sent, it
    // counted when it woke. One request in each second of the pause is sent (and waits for
    // the client's timeout); one each would have made 20.
    let left = support::eventually(
        Duration::from_secs(10),
        "counting resumed after Redis came back",
        || async {
            let response = post(&ingress.base, "/api/v1/events", &order, Some(&bearer)).await;
            assert_eq!(response.status(), 202);
            remaining(&response).ok_or("no count in the answer")
        },
    )
    .await;
    assert!(
        left >= 990,
        "{} hits reached Redis: the paused Redis was asked for each request",
        999 - left
    );
    ingress.kill9().await;
}

#[tokio::test]
async fn route_limits_versions_deprecations_and_cors() {
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let auth = HeraldProcess::start(
        "auth",
        &kafka,
        &database,
        &[
            (
                "RATE_LIMIT_ROUTES",
                &format!(
                    "POST /api/v1/auth/login=3/10m;{}",
                    support::process::RELAXED_ROUTE_LIMITS
                ),
            ),
            ("DEPRECATED_ROUTES", "GET /api/v1/me=2026-12-01,2027-06-01"),
            ("CORS_ORIGINS", "https://app.example.com"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let email = unique_email("limited");
    register(&auth.base, &email, None).await;
    // A client of its own behind the trusted proxy (counters may live in a shared Redis).
    let client_ip = format!(
        "10.{}.{}.{}",
        rand_digits() % 250,
        rand_digits() % 250,
        rand_digits() % 250
    );
    let attempt = |password: &'static str| {
        let (base, email, client_ip) = (auth.base.clone(), email.clone(), client_ip.clone());
        async move {
            client()
                .post(format!("{base}/api/v1/auth/login"))
                .header("x-forwarded-for", client_ip)
                .json(&json!({"email": email, "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    for n in 1..=3 {
        let r = attempt("wrong password!").await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["ratelimit-remaining"],
            (3 - n).to_string().as_str()
        );
    }
    let limited = attempt(PASSWORD).await;
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry), "Retry-After {retry}");

    // App versions: changed at runtime by an admin, read by anyone.
    let admin = token("ops", &["admin"]);
    let put = client()
        .put(format!("{}/api/v1/admin/app-versions/ios", auth.base))
        .bearer_auth(&admin)
        .json(&json!({"latest": "2.1.0", "minimum": "2.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let user_put = client()
        .put(format!("{}/api/v1/admin/app-versions/ios", auth.base))
        .bearer_auth(token("u", &["user"]))
        .json(&json!({"latest": "9.0.0", "minimum": "9.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(user_put.status(), 403);
    let check = |version: &'static str| {
        let base = auth.base.clone();
        async move {
            let r = client()
                .get(format!(
                    "{base}/api/v1/app/version-check?platform=ios&version={version}"
                ))
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (_, soft) = check("2.0.1").await;
    assert_eq!(
        (soft["soft_update"].as_bool(), soft["hard_update"].as_bool()),
        (Some(true), Some(false))
    );
    let (_, hard) = check("1.9").await;
    assert_eq!(hard["hard_update"], true);
    assert_eq!(hard["minimum"], "2.0.0");
    let (status, _) = check("latest").await;
    assert_eq!(status, 400);

    // Deprecation and Sunset headers on the deprecated route.
    // The login limit counts per client: another address behind the trusted proxy has its own.
    let session: Value = client()
        .post(format!("{}/api/v1/auth/login", auth.base))
        .header(
            "x-forwarded-for",
            format!("192.0.2.{}", rand_digits() % 250),
        )
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let me = get(
        &auth.base,
        "/api/v1/me",
        session["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(me.headers()["deprecation"], "@1796083200");
    assert_eq!(me.headers()["sunset"], "Tue, 01 Jun 2027 00:00:00 GMT");
    assert!(me.headers().get("x-request-id").is_some());

    // CORS: the allowed origin only, never reflected for another.
    let preflight = |origin: &'static str| {
        let base = auth.base.clone();
        async move {
            client()
                .request(reqwest::Method::OPTIONS, format!("{base}/api/v1/me"))
                .header("origin", origin)
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "authorization")
                .send()
                .await
                .unwrap()
        }
    };
    let allowed = preflight("https://app.example.com").await;
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let evil = preflight("https://evil.example.net").await;
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    auth.kill9().await;
}

#[tokio::test]
async fn the_relay_killed_mid_flight_loses_no_user_registered() {
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let mut created: HashSet<String> = HashSet::new();
    for round in 0..3 {
        let auth = HeraldProcess::start("auth", &kafka, &database, &[]).await;
        let base = auth.base.clone();
        let sends: Vec<_> = (0..40)
            .map(|i| {
                let base = base.clone();
                tokio::spawn(async move {
                    let body = json!({"email": unique_email(&format!("r{round}-{i}")), "password": PASSWORD});
                    let response = client().post(format!("{base}/api/v1/auth/register")).json(&body).send().await.ok()?;
                    let value: Value = response.json().await.ok()?;
                    value["id"].as_str().map(str::to_string)
                })
            })
            .collect();
        // Killed while registrations are in flight and the relay has events to publish.
        tokio::time::sleep(Duration::from_millis(300 + 300 * round)).await;
        auth.kill9().await;
        let ids: Vec<Option<String>> = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .map(|joined| joined.unwrap())
            .collect();
        created.extend(ids.into_iter().flatten());
    }
    let left: i64 = {
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM auth_outbox")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // A last process relays whatever the killed ones left in the outbox.
    let auth = HeraldProcess::start("auth", &kafka, &database, &[]).await;
    let accounts: Vec<String> = {
        let pool = sqlx::PgPool::connect(&database).await.unwrap();
        sqlx::query_scalar("SELECT id FROM auth_accounts")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    assert!(
        created.iter().all(|id| accounts.contains(id)),
        "a 201 without its account"
    );
    let per_user: HashMap<String, usize> = wait_for("every account's user.registered", || async {
        let mut per_user: HashMap<String, usize> = HashMap::new();
        let mut ids = HashSet::new();
        for (_, d) in support::read(&kafka, "users").await {
            if d.envelope.event_type == "user.registered" && ids.insert(d.envelope.event_id) {
                *per_user
                    .entry(d.data["user_id"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
        }
        accounts
            .iter()
            .all(|id| per_user.contains_key(id))
            .then_some(per_user)
    })
    .await;
    assert_eq!(
        per_user.len(),
        accounts.len(),
        "an event without its account"
    );
    assert!(
        per_user.values().all(|n| *n == 1),
        "one event id per account"
    );
    println!(
        "left in the outbox by killed relays {left}; accounts {} (acknowledged {}), user.registered {}",
        accounts.len(),
        created.len(),
        per_user.len(),
    );
    auth.kill9().await;
}

#[tokio::test]
async fn canary_secrets_appear_in_no_log_and_no_payload_but_their_own() {
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let log = support::test_dir("auth-canary").with_extension("log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let auth = HeraldProcess::start_logging(
        "auth",
        &kafka,
        &database,
        &[("RUST_LOG", "debug"), ("LOG_BODIES", "true")],
        &log,
    )
    .await;
    let base = auth.base.clone();
    let password = "canary-pw-7f3a9c2e1d sea";
    let wrong_password = "canary-wrong-5b8e0a sky";
    let new_password = "canary-new-2c4d6f8a tree";
    let reset_password = "canary-reset-9e7c5a3b rock";
    let email = unique_email("canary");
    let phone = unique_phone();
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/register",
            &json!({"email": email, "password": password, "phone": phone})
        )
        .await,
        201
    );
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/login",
            &json!({"email": email, "password": wrong_password})
        )
        .await,
        401
    );
    let r = post(
        &base,
        "/api/v1/auth/login",
        &json!({"email": email, "password": password}),
        None,
    )
    .await;
    let session: Value = r.json().await.unwrap();
    let access = session["access_token"].as_str().unwrap().to_string();
    let refresh1 = session["refresh_token"].as_str().unwrap().to_string();
    let r = post(
        &base,
        "/api/v1/auth/refresh",
        &json!({"refresh_token": refresh1}),
        None,
    )
    .await;
    let refresh2 = r.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/logout",
            &json!({"refresh_token": refresh2})
        )
        .await,
        204
    );

    // Access tokens outlive the sessions revoked above (they expire on their own).
    verify_phone(&base, &kafka, &access, &phone).await;
    assert_eq!(
        status(&base, "/api/v1/auth/otp/request", &json!({"phone": phone})).await,
        202
    );
    let code = texted(&kafka, &phone, "login").await;
    let wrong_code = if code == "918273" { "918274" } else { "918273" };
    post(
        &base,
        "/api/v1/auth/otp/verify",
        &json!({"phone": phone, "code": wrong_code}),
        None,
    )
    .await;
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/otp/verify",
            &json!({"phone": phone, "code": code})
        )
        .await,
        200
    );

    let r = post(
        &base,
        "/api/v1/auth/password",
        &json!({"current_password": password, "new_password": new_password}),
        Some(&access),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/password/forgot",
            &json!({"email": email})
        )
        .await,
        202
    );
    let link = event_data(&kafka, "users", |d| {
        d.envelope.event_type == "user.password_reset_requested"
    })
    .await["link"]
        .as_str()
        .unwrap()
        .to_string();
    let reset_token = link.split("#token=").nth(1).unwrap().to_string();
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/password/reset",
            &json!({"token": reset_token, "new_password": reset_password})
        )
        .await,
        204
    );
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/password/reset",
            &json!({"token": reset_token, "new_password": reset_password})
        )
        .await,
        401,
        "a reset link works once"
    );
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/login",
            &json!({"email": email, "password": new_password})
        )
        .await,
        401,
        "the password before the reset still works"
    );
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/login",
            &json!({"email": email, "password": reset_password})
        )
        .await,
        200
    );
    auth.terminate().await;

    let logged = std::fs::read_to_string(&log).unwrap();
    // The log did record the requests and their bodies, redacted.
    assert!(
        logged.contains("/api/v1/auth/login") && logged.contains("[redacted]"),
        "nothing logged"
    );
    let mut payloads: Vec<(String, Vec<u8>)> = Vec::new();
    for topic in ["users", "otp"] {
        for (record, _) in support::read(&kafka, topic).await {
            payloads.push((topic.to_string(), record.payload.unwrap_or_default()));
        }
    }
    let contains =
        |bytes: &[u8], needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    for (name, secret) in [
        ("password", password),
        ("wrong password", wrong_password),
        ("new password", new_password),
        ("reset password", reset_password),
        ("refresh token", refresh1.as_str()),
        ("rotated refresh token", refresh2.as_str()),
        ("OTP", code.as_str()),
        ("wrong OTP", wrong_code),
        ("reset link token", reset_token.as_str()),
    ] {
        assert!(!logged.contains(secret), "the {name} is in the log");
        let holders: Vec<&str> = payloads
            .iter()
            .filter(|(_, p)| contains(p, secret))
            .map(|(t, _)| t.as_str())
            .collect();
        // The code and the link travel sealed: only the notifications service opens them.
        assert!(
            holders.is_empty(),
            "the {name} is in a payload of {holders:?}"
        );
    }
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test]
async fn a_signing_key_rotation_breaks_no_token() {
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let auth =
        HeraldProcess::start("auth", &kafka, &database, &[("SIGNING_KEY_LEAD_SECS", "3")]).await;
    let jwks_url = format!("{}/.well-known/jwks.json", auth.base);
    let ingress = HeraldProcess::start(
        "ingress",
        &kafka,
        &database,
        &[("JWT_JWKS_URL", &jwks_url), ("JWT_JWKS_REFRESH_SECS", "1")],
    )
    .await;
    let email = unique_email("rotation");
    register(&auth.base, &email, None).await;

    // The first admin is made from the command line; the role comes with the next token.
    let promoted = std::process::Command::new(support::process::HERALD)
        .args(["auth", "set-role", "--email", &email, "--role", "admin"])
        .env("KAFKA_BROKERS", kafka.brokers.as_deref().unwrap())
        .env("TOPIC_PREFIX", &kafka.topic_prefix)
        .env("DATABASE_URL", &database)
        .env("JWT_HS256_SECRET", support::SECRET)
        .output()
        .unwrap();
    assert!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    let old = login(&auth.base, &email).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let order = support::order("o-rotation");
    wait_for("the ingress to trust the first key", || async {
        let status = post(&ingress.base, "/api/v1/events", &order, Some(&old))
            .await
            .status();
        (status == StatusCode::ACCEPTED).then_some(())
    })
    .await;

    let rotated = post(
        &auth.base,
        "/api/v1/admin/signing-keys/rotate",
        &json!({}),
        Some(&old),
    )
    .await;
    assert_eq!(rotated.status(), 202);
    let next_kid = rotated.json::<Value>().await.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let jwks: Value = client()
        .get(&jwks_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let published: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(
        published,
        [kid_of(&old).as_str(), next_kid.as_str()],
        "published before it signs"
    );
    let during = login(&auth.base, &email).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        kid_of(&during),
        kid_of(&old),
        "the new key signed before its lead time"
    );

    let new = wait_for("the new key to sign", || async {
        let token = login(&auth.base, &email).await["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        (kid_of(&token) == next_kid).then_some(token)
    })
    .await;
    // Accepted at the first try: the ingress learnt the key during the lead time.
    assert_eq!(
        post(&ingress.base, "/api/v1/events", &order, Some(&new))
            .await
            .status(),
        202
    );
    assert_eq!(
        post(&ingress.base, "/api/v1/events", &order, Some(&old))
            .await
            .status(),
        202
    );
    ingress.kill9().await;
    auth.kill9().await;
}

/// A second account registered with someone else's phone never signs in by code as them, and
/// cannot make the phone its own: codes go to the account that verified the phone, and one
/// verified phone belongs to one account.
#[tokio::test]
async fn a_second_account_with_someone_elses_phone_gets_neither_their_codes_nor_the_phone() {
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let auth = HeraldProcess::start("auth", &kafka, &database, &[]).await;
    let phone = unique_phone();
    // Before anyone verifies it, the phone signs no one in.
    let victim_email = unique_email("victim");
    let victim = register(&auth.base, &victim_email, Some(&phone)).await;
    assert_eq!(victim["phone_verified"], false);
    let before = support::read(&kafka, "otp").await.len();
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/otp/request",
            &json!({"phone": phone})
        )
        .await,
        202
    );
    let victim_access = login(&auth.base, &victim_email).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    verify_phone(&auth.base, &kafka, &victim_access, &phone).await;
    let sent: Vec<Value> = support::read(&kafka, "otp")
        .await
        .into_iter()
        .skip(before)
        .map(|(_, d)| d.data)
        .collect();
    assert!(
        sent.iter().all(|d| d["purpose"] != "login"),
        "a code went to an unverified phone: {sent:?}"
    );

    // The attacker registers with the same phone.
    let attacker_email = unique_email("attacker");
    let attacker = register(&auth.base, &attacker_email, Some(&phone)).await;
    let attacker_id = attacker["id"].as_str().unwrap().to_string();
    let attacker_access = login(&auth.base, &attacker_email).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    // A sign-in code for the phone is the victim's, never the attacker's.
    assert_eq!(
        status(
            &auth.base,
            "/api/v1/auth/otp/request",
            &json!({"phone": phone})
        )
        .await,
        202
    );
    let login_codes: Vec<Value> = support::read(&kafka, "otp")
        .await
        .into_iter()
        .map(|(_, d)| d.data)
        .filter(|d| d["purpose"] == "login")
        .collect();
    assert!(!login_codes.is_empty());
    assert!(
        login_codes.iter().all(|d| d["user_id"] == victim["id"]),
        "{login_codes:?}"
    );
    // Even holding the code texted to the phone, the attacker cannot take the phone over.
    let verified = verify_phone(&auth.base, &kafka, &attacker_access, &phone).await;
    assert_eq!(verified["status"], 409, "{verified}");
    let me: Value = get(&auth.base, "/api/v1/me", &attacker_access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], attacker_id.as_str());
    assert_eq!(me["phone_verified"], false);
    auth.terminate().await;
}

/// The built-in limits of the auth routes hold whatever token comes with the requests: per
/// client address (30 logins in 10 minutes), and per target account from any address (10).
#[tokio::test]
async fn login_guesses_are_limited_per_address_and_per_account_whatever_token_is_attached() {
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let auth = HeraldProcess::start(
        "auth",
        &kafka,
        &database,
        &[
            // No route of the auth service named: its built-in limits apply.
            ("RATE_LIMIT_ROUTES", "GET /nothing=1/1m"),
            ("LOGIN_LIMIT_PER_ACCOUNT", "10/10m"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ],
    )
    .await;
    let bearer = token("guesser", &["user"]);
    let guess = |email: String, from: String| {
        let url = format!("{}/api/v1/auth/login", auth.base);
        let bearer = bearer.clone();
        async move {
            client()
                .post(url)
                .bearer_auth(bearer)
                .header("x-forwarded-for", from)
                .json(&json!({"email": email, "password": "a wrong guess"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Addresses of this run's own (counts may be kept in a Redis shared with other runs).
    let run = uuid::Uuid::new_v4().as_u128() as u32;
    let address = |n: u32| format!("2001:db8:{:x}:{:x}::{n:x}", run >> 16, run & 0xffff);
    // One account, guessed at from eleven addresses: the eleventh guess is refused.
    let victim = unique_email("victim");
    register(&auth.base, &victim, None).await;
    for i in 0..10 {
        let status = guess(victim.clone(), address(i)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {}", i + 1);
    }
    let refused = guess(victim.clone(), address(99)).await;
    assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);
    // One address, guessing at thirty-one accounts: the thirty-first is refused.
    for i in 0..30 {
        let status = guess(unique_email("any"), address(1000)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "account {}", i + 1);
    }
    let refused = guess(unique_email("any"), address(1000)).await;
    assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);
    auth.terminate().await;
}

/// Two OpenID providers on loopback, and `herald auth` configured with both.
struct WithProviders {
    auth: HeraldProcess,
    alpha: support::oidc::OidcProvider,
    beta: support::oidc::OidcProvider,
    database: String,
    _dir: std::path::PathBuf,
}

async fn with_providers(accounts: Value) -> WithProviders {
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    // The callback registered at the providers names Herald's address: a free port, taken
    // before Herald starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut alpha = support::oidc::OidcProvider::start().await;
    let mut beta = support::oidc::OidcProvider::start().await;
    let dir = support::test_dir(&format!("oidc-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("beta-secret"), "beta-client-secret\n").unwrap();
    let callback = |name: &str| format!("{base}/api/v1/auth/oidc/{name}/callback");
    let file = dir.join("providers.toml");
    std::fs::write(
        &file,
        format!(
            "[[providers]]\nname = \"alpha\"\nissuer = \"{}\"\nclient_id = \"herald-alpha\"\n\
             client_secret = \"alpha-client-secret\"\nredirect_uri = \"{}\"\n\n\
             [[providers]]\nname = \"beta\"\nissuer = \"{}\"\nclient_id = \"herald-beta\"\n\
             client_secret_file = \"{}\"\nredirect_uri = \"{}\"\nscopes = [\"email\"]\n",
            alpha.issuer,
            callback("alpha"),
            beta.issuer,
            dir.join("beta-secret").display(),
            callback("beta"),
        ),
    )
    .unwrap();
    alpha
        .configure(
            "herald-alpha",
            "alpha-client-secret",
            &callback("alpha"),
            accounts.clone(),
        )
        .await;
    beta.configure(
        "herald-beta",
        "beta-client-secret",
        &callback("beta"),
        accounts,
    )
    .await;
    let auth = HeraldProcess::start(
        "auth",
        &kafka,
        &database,
        &[
            ("HERALD_LISTEN", &format!("127.0.0.1:{port}")),
            ("OIDC_PROVIDERS_FILE", file.to_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(auth.base, base);
    WithProviders {
        auth,
        alpha,
        beta,
        database,
        _dir: dir,
    }
}

/// A callback URL with one query parameter replaced (or added).
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .chain([(name.to_string(), value.to_string())])
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    parsed.into()
}

fn param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap()
}

/// The problem type's last part, after checking the status and the media type.
async fn problem(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    body["type"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_openid_providers_links_one_account_and_bad_flows_create_nothing() {
    let bob_email = unique_email("bob");
    let carol_email = unique_email("carol");
    let alice_email = unique_email("alice");
    let accounts = json!({
        "alice": {"email": alice_email, "email_verified": true, "name": "Alice\u{202e} Liddell"},
        "bob": {"email": bob_email.to_uppercase(), "email_verified": true, "name": "Bob"},
        "mallory": {"email": carol_email, "email_verified": false, "name": "Not Carol"},
        "dave": {"email": unique_email("dave"), "email_verified": false},
        "nomail": {"name": "No Mail"},
    });
    let WithProviders {
        auth,
        alpha,
        beta,
        database,
        _dir,
    } = with_providers(accounts).await;
    let base = auth.base.clone();
    let start = |name: &str| format!("{base}/api/v1/auth/oidc/{name}/start");
    let providers: Value = client()
        .get(format!("{base}/api/v1/auth/oidc/providers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        providers,
        json!({"providers": [
            {"name": "alpha", "start": "/api/v1/auth/oidc/alpha/start"},
            {"name": "beta", "start": "/api/v1/auth/oidc/beta/start"}]})
    );
    let bob = register(&base, &bob_email, None).await;
    let carol = register(&base, &carol_email, None).await;

    // 1. First sign-in: a new account with the verified email, linked to the identity.
    let browser = support::oidc::Browser::new();
    let callback = browser.through_provider(&start("alpha"), "alice").await;
    assert_eq!(param(&callback, "iss"), alpha.issuer);
    let answer = browser.get(&callback).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    assert!(
        answer.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"),
        "the binding cookie is cleared"
    );
    let first: Value = answer.json().await.unwrap();
    let alice_id = first["user_id"].as_str().unwrap().to_string();
    let me: Value = get(&base, "/api/v1/me", first["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], alice_email);
    assert_eq!(
        me["display_name"], "Alice Liddell",
        "the override is dropped"
    );
    assert_eq!(me["role"], "user");
    // Such an account has no password: none signs in, and it is refused like any other.
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/login",
            &json!({"email": alice_email, "password": "!"})
        )
        .await,
        StatusCode::UNAUTHORIZED
    );

    // 2. Again: the same account, from a new browser.
    let again = support::oidc::Browser::new();
    let callback_again = again.through_provider(&start("alpha"), "alice").await;
    let second: Value = again.get(&callback_again).await.json().await.unwrap();
    assert_eq!(second["user_id"], alice_id.as_str());

    // 3. A verified email of an existing account links to it (the provider's upper case
    // counts as the same address). Whoever registered the address with a password never
    // proved it was theirs; the provider just did: the password and its sessions end.
    let before = login(&base, &bob_email).await;
    let linked = browser.through_provider(&start("beta"), "bob").await;
    let answer: Value = browser.get(&linked).await.json().await.unwrap();
    assert_eq!(answer["user_id"], bob["id"]);
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/login",
            &json!({"email": bob_email, "password": PASSWORD})
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(
            &base,
            "/api/v1/auth/refresh",
            &json!({"refresh_token": before["refresh_token"]})
        )
        .await,
        StatusCode::UNAUTHORIZED
    );

    let mut refusals: Vec<String> = Vec::new();
    // 4. An unverified email matching an account: 409, nothing linked, twice. (Each in a
    // browser of its own: the provider keeps a browser signed in.)
    for _ in 0..2 {
        let fresh = support::oidc::Browser::new();
        let url = fresh.through_provider(&start("beta"), "mallory").await;
        refusals.push(problem(fresh.get(&url).await, 409).await);
    }
    assert_eq!(login(&base, &carol_email).await["user_id"], carol["id"]);
    // 5. No verified email and no account: 403, nothing created.
    for login_as in ["dave", "nomail"] {
        let fresh = support::oidc::Browser::new();
        let url = fresh.through_provider(&start("alpha"), login_as).await;
        refusals.push(problem(fresh.get(&url).await, 403).await);
    }
    // 6. A forged state.
    refusals.push(
        problem(
            browser
                .get(&format!(
                    "{base}/api/v1/auth/oidc/alpha/callback?code=abc&state=forged"
                ))
                .await,
            400,
        )
        .await,
    );
    // 7. A callback replayed: its state is used up.
    refusals.push(problem(browser.get(&callback).await, 400).await);
    // 8. A used code with a fresh state of this browser: the provider refuses the code.
    let fresh = browser.get(&start("alpha")).await;
    let location = fresh.headers()["location"].to_str().unwrap().to_string();
    let replayed = with_param(&callback, "state", &param(&location, "state"));
    refusals.push(problem(browser.get(&replayed).await, 400).await);
    // 9. A sign-in finished in another browser than the one that started it.
    let stolen = browser.through_provider(&start("alpha"), "alice").await;
    refusals.push(problem(support::oidc::Browser::new().get(&stolen).await, 400).await);
    // 10. A response naming another issuer (a mix-up), refused before its code is used.
    let mixed = browser.through_provider(&start("alpha"), "alice").await;
    refusals.push(
        problem(
            browser.get(&with_param(&mixed, "iss", &beta.issuer)).await,
            400,
        )
        .await,
    );
    // 11. A code of the other provider sent to this one's callback: its token endpoint
    // never issued it.
    let at_beta = browser.through_provider(&start("beta"), "bob").await;
    let pending = browser.get(&start("alpha")).await;
    let alpha_state = param(pending.headers()["location"].to_str().unwrap(), "state");
    let crossed = format!(
        "{base}/api/v1/auth/oidc/alpha/callback?code={}&state={alpha_state}",
        param(&at_beta, "code")
    );
    refusals.push(problem(browser.get(&crossed).await, 400).await);
    // 12. The provider ended the sign-in; 13. a provider that is not configured.
    refusals.push(
        problem(
            browser
                .get(&format!(
                    "{base}/api/v1/auth/oidc/alpha/callback?error=access_denied&state=x"
                ))
                .await,
            400,
        )
        .await,
    );
    refusals.push(problem(browser.get(&start("gamma")).await, 404).await);
    eprintln!("refusals: {refusals:?}");
    assert_eq!(
        refusals,
        [
            "email-unverified",
            "email-unverified",
            "no-verified-email",
            "no-verified-email",
            "invalid-state",
            "invalid-state",
            "code-refused",
            "browser-mismatch",
            "wrong-issuer",
            "code-refused",
            "provider-refused",
            "unknown-provider",
        ]
    );

    // Nothing but alice's account was made, and only alice's and bob's identities linked.
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let accounts: Vec<(String,)> = sqlx::query_as("SELECT email FROM auth_accounts ORDER BY email")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut expected = vec![alice_email.clone(), bob_email.clone(), carol_email.clone()];
    expected.sort();
    assert_eq!(
        accounts.into_iter().map(|(e,)| e).collect::<Vec<_>>(),
        expected
    );
    let links: Vec<(String, String, String)> =
        sqlx::query_as("SELECT issuer, subject, account_id FROM auth_identities ORDER BY subject")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        links,
        [
            (alpha.issuer.clone(), "alice".to_string(), alice_id.clone()),
            (
                beta.issuer.clone(),
                "bob".to_string(),
                bob["id"].as_str().unwrap().to_string()
            ),
        ]
    );
    auth.terminate().await;
}
