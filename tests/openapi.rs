//! The API's reference against what really runs, with tools that share no code with Herald:
//! - the OpenAPI document describes every route the routers serve (read from their source),
//!   and nothing they do not serve;
//! - `/docs`, rendered by headless Chromium, shows every operation;
//! - schemathesis generates requests from the document for every operation of a `herald up`
//!   on PostgreSQL, as anonymous and with a token of each role, and checks that no answer is a 5xx, that each status is
//!   one the operation documents, and that each body matches its documented schema.
//!
//! The test command runs a short schemathesis pass; `SCHEMATHESIS_FULL=1` runs a long one.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::routes::routes;
use support::up::Up;

/// `GET url` as JSON, with `token` when given.
async fn get_json(url: &str, token: Option<&str>) -> Value {
    let mut request = support::client().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_route_the_routers_serve_and_the_page_shows_them() {
    let up = Up::start("openapi", &[]).await;
    let document = get_json(&format!("{}/api/v1/openapi.json", up.base), None).await;
    assert_eq!(document["openapi"], "3.1.0");
    // Each event type of the catalog is one shape of the events body.
    let catalog = get_json(&format!("{}/api/v1/event-types", up.base), None).await;
    assert_eq!(
        document["components"]["schemas"]["Event"]["oneOf"]
            .as_array()
            .unwrap()
            .len(),
        catalog["event_types"].as_array().unwrap().len()
    );
    let documented: BTreeSet<(String, String)> = platform::openapi::operations(&document)
        .into_iter()
        .collect();
    let served: BTreeSet<(String, String)> = routes()
        .into_iter()
        .map(|route| (route.method, route.path))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "routes the routers serve and the document does not describe: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "operations the document describes and no router serves: {unserved:?}"
    );
    eprintln!(
        "{} operations on {} paths, the same as the routers serve",
        documented.len(),
        document["paths"].as_object().unwrap().len()
    );
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            assert!(
                operation["summary"].as_str().is_some(),
                "{what}: no summary"
            );
            let responses = operation["responses"].as_object().unwrap();
            // A success is a 2xx, or the redirect of a route whose work is to send the
            // browser elsewhere (a sign-in's start).
            assert!(
                responses
                    .keys()
                    .any(|s| s.starts_with('2') || s.starts_with('3')),
                "{what}: no success answer"
            );
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        response["content"]["application/problem+json"].is_object(),
                        "{what} {status}: not problem+json"
                    );
                }
            }
        }
    }

    // The page, as a browser renders it: every operation is on it, by its id.
    let dom = chromium_dom(&format!("{}/docs", up.base));
    for (path, item) in document["paths"].as_object().unwrap() {
        for operation in item.as_object().unwrap().values() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(
                dom.contains(&format!("id=\"{id}\"")),
                "/docs does not show {id} ({path})"
            );
        }
    }
    up.assert_no_panic();
}

/// The DOM of `url` after headless Chromium loaded it.
fn chromium_dom(url: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium (infra/scripts/services.sh installs it)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The folder infra/scripts/services.sh installs schemathesis into.
fn schemathesis_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME");
    PathBuf::from(home).join(".cache/herald/schemathesis-4.32.5")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_describe() {
    let full = std::env::var_os("SCHEMATHESIS_FULL").is_some();
    // On PostgreSQL, as deployed: it refuses what SQLite stores (a NUL in a string).
    let database = support::audit::fresh_postgres().await;
    let up = Up::start("schemathesis", &[("DATABASE_URL", database.as_str())]).await;
    seed(&up).await;
    let schema = format!("{}/api/v1/openapi.json", up.base);
    // The user is an account of the auth service, so /me and its kin reach their logic.
    let mut callers = vec![("anonymous", None), ("user", Some(account(&up).await))];
    for role in ["admin", "analyst", "service"] {
        callers.push((role, Some(up.token(&format!("st-{role}"), role))));
    }
    let mut failed = Vec::new();
    for (who, token) in &callers {
        let report = up.data.join(format!("schemathesis-{who}.json"));
        let mut command = std::process::Command::new("python3");
        command
            .arg(schemathesis_dir().join("bin/st"))
            .env("PYTHONPATH", schemathesis_dir())
            .args(["run", &schema])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            ])
            .args(["--max-examples", if full { "200" } else { "8" }])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--workers", "2", "--seed", "7", "--request-timeout", "20"])
            // The stream stays open for as long as the client listens: a request for it
            // never ends, which a generator of single requests cannot test.
            .args(["--exclude-path", "/api/v1/stream"])
            // A topic's stream likewise, and its long-poll waits up to 30 s for an event that
            // a generator of single requests never posts: tests/streams.rs drives both.
            .args(["--exclude-path", "/api/v1/streams/{topic}"])
            .args(["--report", "json", "--report-json-path"])
            .arg(&report)
            .args(["--output-truncate", "false"]);
        if let Some(token) = token {
            command.args(["--header", &format!("Authorization: Bearer {token}")]);
        }
        let started = std::time::Instant::now();
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("schemathesis (infra/scripts/services.sh installs it)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains("Tested:") || l.contains(" generated"))
            .collect();
        eprintln!(
            "schemathesis as {who} in {:?}:\n{}",
            started.elapsed(),
            summary.join("\n")
        );
        if !out.status.success() {
            failed.push(format!(
                "as {who}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    up.assert_no_panic();
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// One event of each type, by a caller allowed to publish it, in the audit log before the
/// run: the lists schemathesis reads then hold records, so their schemas are checked on real
/// items rather than on empty pages.
async fn seed(up: &Up) {
    let client = support::client();
    let catalog = get_json(&format!("{}/api/v1/event-types", up.base), None).await;
    let types = catalog["event_types"].as_array().unwrap();
    for event_type in types {
        let role = event_type["publish_roles"][0].as_str().unwrap();
        let response = client
            .post(format!("{}/api/v1/events", up.base))
            .bearer_auth(up.token("st-seed", role))
            .json(&serde_json::json!({"type": event_type["type"], "data": event_type["example"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", event_type["type"]);
    }
    let admin = up.token("st-seed-admin", "admin");
    support::eventually(
        Duration::from_secs(60),
        "the seeded events in the audit log",
        || async {
            let page = get_json(&format!("{}/api/v1/audit?limit=100", up.base), Some(&admin)).await;
            let items = page["items"].as_array().map_or(0, Vec::len);
            if items >= types.len() {
                Ok(())
            } else {
                Err(format!("{items} items"))
            }
        },
    )
    .await;
}

/// The access token of an account registered through the API.
async fn account(up: &Up) -> String {
    let client = support::client();
    let credentials = serde_json::json!({
        "email": "schemathesis@example.com",
        "password": "a long and unusual passphrase",
    });
    let registered = client
        .post(format!("{}/api/v1/auth/register", up.base))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(
        registered.status(),
        201,
        "{}",
        registered.text().await.unwrap()
    );
    let session: Value = client
        .post(format!("{}/api/v1/auth/login", up.base))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    session["access_token"].as_str().unwrap().to_string()
}
