//! The operators' views over HTTP (`GET /api/v1/admin/consumers` on a `herald ingress`
//! process, with a search indexer as the consumer group it watches; dead letters browsed and
//! redriven), and the console that shows them, in headless Chromium on `herald up`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::browser::Browser;
use support::process::HeraldProcess;
use support::up::Up;
use support::{TestIngress, test_dir, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_every_groups_lag_fall_as_its_consumer_reads() {
    let app = TestIngress::start_default().await;
    let dir = test_dir("console").join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite://{}", dir.join("console.db").display());
    let ingress = HeraldProcess::start("ingress", &app.kafka, &database, &[]).await;
    let publisher = token("shop", &["service"]);
    for i in 0..30 {
        let response = app
            .post(&publisher, &support::order(&format!("o-{i}")))
            .await;
        assert_eq!(response.status(), 202);
    }
    let index = dir.join("index").display().to_string();
    let _search = HeraldProcess::start(
        "search-indexer",
        &app.kafka,
        &database,
        &[("SEARCH_INDEX_DIR", index.as_str())],
    )
    .await;
    let get = |bearer: Option<String>| {
        let url = format!("{}/api/v1/admin/consumers", ingress.base);
        async move {
            let mut request = support::client().get(url);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let admin = token("ops", &["admin"]);
    let group = support::eventually(Duration::from_secs(90), "the indexer caught up", || async {
        let (status, body) = get(Some(admin.clone())).await;
        assert_eq!(status, 200, "{body}");
        let indexer = body["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"].as_str().unwrap().starts_with("search-indexer"))
            .cloned();
        match indexer {
            Some(g) if g["lag"] == 0 && g["committed"].as_i64() >= Some(30) => Ok(g),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let partitions = group["partitions"].as_array().unwrap();
    assert!(partitions.iter().any(|p| p["topic"] == "orders"), "{group}");
    assert!(
        partitions
            .iter()
            .all(|p| p["lag"] == 0 && p["end"] == p["committed"])
    );
    // Not for anyone else.
    assert_eq!(get(Some(token("alice", &["user"]))).await.0, 403);
    assert_eq!(get(Some(token("ana", &["analyst"]))).await.0, 403);
    assert_eq!(get(None).await.0, 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_browsed_and_redriven_once_and_stale_or_forged_redrives_change_nothing() {
    let app = TestIngress::start_default().await;
    let dir = test_dir("console").join(uuid::Uuid::new_v4().simple().to_string());
    // The cause: an audit log deployed with the schemas of every event type but one.
    let partial = support::schemas_without(&dir, "user.registered");
    let database = format!("sqlite://{}", dir.join("audit.db").display());
    let ingress_db = format!("sqlite://{}", dir.join("ingress.db").display());
    let ingress = HeraldProcess::start("ingress", &app.kafka, &ingress_db, &[]).await;
    let partial_text = partial.display().to_string();
    let audit = HeraldProcess::start(
        "audit-log",
        &app.kafka,
        &database,
        &[("SCHEMAS_DIR", partial_text.as_str())],
    )
    .await;
    let response = app
        .post(
            &token("accounts", &["service"]),
            &serde_json::json!({"type": "user.registered", "data": {
                "user_id": uuid::Uuid::new_v4(), "email": "late@example.com",
                "display_name": "Late", "locale": "en", "time_zone": "UTC"
            }}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let event_id = accepted["event_id"].as_str().unwrap().to_string();

    let admin = token("ops", &["admin"]);
    let call = |method: reqwest::Method, path: &str, body: Option<Value>, bearer: &str| {
        let mut request = support::client()
            .request(method, format!("{}{path}", ingress.base))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let letters = "/api/v1/admin/dead-letters/audit-log";
    let listed = support::eventually(Duration::from_secs(60), "a dead letter", || async {
        let (status, body) = call(reqwest::Method::GET, letters, None, &admin).await;
        assert_eq!(status, 200, "{body}");
        if body["waiting"] == 1 {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    let letter = &listed["letters"][0];
    assert_eq!(letter["event_id"], event_id.as_str());
    assert_eq!(letter["event_type"], "user.registered");
    assert_eq!(letter["topic"], "users");
    assert_eq!(
        letter["event"]["data"]["display_name"], "Late",
        "decoded: {letter}"
    );
    assert!(!letter["error"].as_str().unwrap().is_empty());
    assert_eq!(letter["redriven"], false);
    let mark = letter["mark"].as_str().unwrap().to_string();
    let redrive = format!("{letters}/redrive");

    // Forged, malformed, not an admin: refused, and nothing is published.
    for (body, bearer, want) in [
        (serde_json::json!({"marks": ["9:999"]}), admin.as_str(), 404),
        (
            serde_json::json!({"marks": [mark.clone(), "9:999"]}),
            admin.as_str(),
            404,
        ),
        (serde_json::json!({"marks": []}), admin.as_str(), 400),
        (
            serde_json::json!({"marks": [mark.clone()], "all": true}),
            admin.as_str(),
            400,
        ),
        (
            serde_json::json!({"marks": [mark.clone()]}),
            &*token("alice", &["user"]),
            403,
        ),
    ] {
        let (status, answer) =
            call(reqwest::Method::POST, &redrive, Some(body.clone()), bearer).await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    let (status, _) = call(
        reqwest::Method::GET,
        "/api/v1/admin/dead-letters/no%20such",
        None,
        &admin,
    )
    .await;
    assert_eq!(status, 400);
    let (_, still) = call(reqwest::Method::GET, letters, None, &admin).await;
    assert_eq!(
        still["waiting"], 1,
        "a refused redrive changed something: {still}"
    );

    // The fix, then the redrive: applied once.
    audit.terminate().await;
    let _audit = HeraldProcess::start("audit-log", &app.kafka, &database, &[]).await;
    let (status, answer) = call(
        reqwest::Method::POST,
        &redrive,
        Some(serde_json::json!({"marks": [mark.clone()]})),
        &admin,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["redriven"][0]["event_id"], event_id.as_str());
    let id = uuid::Uuid::parse_str(&event_id).unwrap();
    support::eventually(
        Duration::from_secs(60),
        "the redriven event applied",
        || async {
            let rows = support::audit::rows_by_id(&database).await;
            if rows.get(&id) == Some(&1) {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    )
    .await;
    // The same request again, from a stale page: refused, nothing published twice.
    let (status, answer) = call(
        reqwest::Method::POST,
        &redrive,
        Some(serde_json::json!({"marks": [mark]})),
        &admin,
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    let (_, after) = call(reqwest::Method::GET, letters, None, &admin).await;
    assert_eq!(
        (
            after["waiting"].clone(),
            after["letters"][0]["redriven"].clone()
        ),
        (0.into(), true.into())
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        support::audit::rows_by_id(&database).await.get(&id),
        Some(&1)
    );
    app.stop().await;
}

const PASSWORD: &str = "a long and unusual passphrase";

/// An account of `up`'s auth service; its id.
async fn register(up: &Up, email: &str) -> String {
    let response = support::client()
        .post(format!("{}/api/v1/auth/register", up.base))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().expect("the profile's id").to_string()
}

/// Fills the sign-in form and submits it, as a user's typing and click would.
async fn sign_in(browser: &mut Browser, email: &str) {
    browser
        .eval(&format!(
            "document.getElementById('email').value = {email:?};\
             document.getElementById('password').value = {PASSWORD:?};\
             document.querySelector('#sign-in-form button').click(); true"
        ))
        .await;
}

/// Waits for the console to list audit-archive's two letters as waiting, after choosing that
/// group and pressing Show when `show`.
async fn waiting_letters(browser: &mut Browser, show: bool) {
    if show {
        browser
            .eval(
                "document.getElementById('dl-group').value = 'audit-archive';\
                 document.querySelector('#dl-form button').click(); true",
            )
            .await;
    }
    browser
        .wait_for(
            "the list again",
            "document.getElementById('dl-status').innerText.includes('2 waiting')",
            Duration::from_secs(20),
        )
        .await;
}

/// The figure in column `class` of the group row whose name starts with `group`, as shown.
fn shown(group: &str, class: &str) -> String {
    format!(
        "(() => {{ const tr = [...document.querySelectorAll('#lag tr.group')]\
           .find(r => r.dataset.group.startsWith({group:?}));\
           return tr ? tr.querySelector('td.{class}').innerText.replace(/,/g, '') : null; }})()"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_watches_lag_move_and_redrives_a_dead_letter_once_in_a_browser() {
    // Reports that catch up on the last hours at start, so the console has runs to link.
    let dir = test_dir("console").join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let schedule = dir.join("reports.toml");
    std::fs::write(
        &schedule,
        "[[report]]\nname = 'hourly'\ntitle = 'Hourly'\ncron = '1 * * * *'\n\
         covers = 'hour'\nrecipients = ['ops@example.com']\n",
    )
    .unwrap();
    let schedule = schedule.display().to_string();
    let up = Up::start(
        "console-browser",
        &[
            ("REPORTS_FILE", schedule.as_str()),
            ("REPORTS_CATCH_UP_HOURS", "2"),
            ("REPORTS_TICK_MS", "200"),
        ],
    )
    .await;
    // A second audit log, in a consumer group of its own, deployed without the schema of
    // user.registered: each registration below becomes one of its dead letters.
    let partial = support::schemas_without(&dir, "user.registered");
    let archive_db = format!("sqlite://{}", dir.join("archive.db").display());
    let group = format!("{}audit-archive", up.kafka.topic_prefix);
    let partial_text = partial.display().to_string();
    let archive = HeraldProcess::start(
        "audit-log",
        &up.kafka,
        &archive_db,
        &[
            ("SCHEMAS_DIR", partial_text.as_str()),
            ("CONSUMER_GROUP", group.as_str()),
        ],
    )
    .await;
    let ops = register(&up, "ops@example.com").await;
    register(&up, "viewer@example.com").await;
    let response = support::client()
        .put(format!("{}/api/v1/admin/users/{ops}/role", up.base))
        .bearer_auth(up.token("root", "admin"))
        .json(&serde_json::json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let artifacts =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/console");
    let mut browser = Browser::launch(&dir.join("chromium"), &artifacts).await;
    browser.goto(&format!("{}/console", up.base)).await;
    browser
        .wait_for(
            "the sign-in form",
            "!document.getElementById('sign-in').hidden",
            Duration::from_secs(10),
        )
        .await;

    // Not an admin: refused by the API itself, and nothing is shown.
    sign_in(&mut browser, "viewer@example.com").await;
    browser
        .wait_for(
            "the refusal",
            "document.getElementById('sign-in-error').innerText.includes('403')",
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('panels').hidden")
            .await,
        true
    );
    browser.screenshot("not-an-admin").await;

    // An admin: every panel.
    sign_in(&mut browser, "ops@example.com").await;
    browser
        .wait_for(
            "the consumer groups",
            "!document.getElementById('panels').hidden && document.querySelectorAll('#lag tr.group').length >= 5",
            Duration::from_secs(30),
        )
        .await;
    assert!(browser.text("who").await.contains("admin"));

    // Lag moves while events are posted, and the page follows without a reload.
    let before: i64 = browser
        .wait_for(
            "the indexer's figure",
            &shown("search-indexer", "committed"),
            Duration::from_secs(30),
        )
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let shop = up.token("shop", "service");
    for i in 0..200 {
        let response = support::client()
            .post(format!("{}/api/v1/events", up.base))
            .bearer_auth(&shop)
            .json(&support::order(&format!("c-{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let read_all = format!(
        "(() => {{ const n = {}; return n !== null && Number(n) >= {} && {} === '0'; }})()",
        shown("search-indexer", "committed"),
        before + 200,
        shown("search-indexer", "lag"),
    );
    browser
        .wait_for(
            "the indexer reading the 200 events",
            &read_all,
            Duration::from_secs(60),
        )
        .await;
    // A group's partitions, on demand.
    browser
        .eval(
            "[...document.querySelectorAll('#lag tr.group')]\
               .find(r => r.dataset.group.startsWith('search-indexer'))\
               .querySelector('button.toggle').click(); true",
        )
        .await;
    browser
        .wait_for(
            "the indexer's partitions",
            "[...document.querySelectorAll('#lag tr.partition')].some(r => r.innerText.startsWith('orders / 0'))",
            Duration::from_secs(10),
        )
        .await;
    let lag_shot = browser.screenshot("consumer-groups").await;

    // The audit chains: verified from the button.
    browser
        .eval("document.getElementById('verify').click(); true")
        .await;
    let verified = browser
        .wait_for(
            "the verification",
            "(t => t.startsWith('Intact') && t)(document.getElementById('verify-result').innerText)",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        verified.as_str().unwrap().contains("chains verified"),
        "{verified}"
    );

    // The report runs, each with its outputs.
    browser
        .wait_for(
            "a report run with its links",
            "document.querySelectorAll('#report-runs a[href$=\".html\"]').length > 0",
            Duration::from_secs(60),
        )
        .await;
    let href = browser
        .eval("document.querySelector('#report-runs a[href$=\".csv\"]').href")
        .await;
    let csv = support::client()
        .get(href.as_str().unwrap())
        .bearer_auth(up.token("ana", "analyst"))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200, "the link leads to the report's output");

    // The alerts of this process: none, and no error loading them.
    assert_eq!(
        browser.text("alerts-status").await,
        "None since this process started."
    );

    // Dead letters: the two registrations, decoded.
    let letters = "document.querySelectorAll('#dl tbody tr').length";
    let mut waiting = Value::Null;
    for _ in 0..100 {
        // The group is offered once it has committed (the list follows the lag's).
        browser
            .eval(
                "document.getElementById('dl-group').value = 'audit-archive';\
                 document.querySelector('#dl-form button').click(); true",
            )
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if browser.text("dl-status").await.contains("2 waiting") {
            waiting = browser.eval(letters).await;
            break;
        }
    }
    assert_eq!(waiting, 2, "{}", browser.text("dead-letters").await);
    let page = browser.text("dl").await;
    assert!(page.contains("user.registered"), "{page}");

    // A forged mark (the page altered in the browser): refused, nothing redriven.
    browser
        .eval(
            "const box = document.querySelector('#dl tbody input');\
             box.value = '9:999'; box.checked = true; box.dispatchEvent(new Event('change'));\
             document.getElementById('dl-redrive-selected').click();\
             document.getElementById('dl-confirm-yes').click(); true",
        )
        .await;
    browser
        .wait_for(
            "the refusal",
            "document.getElementById('dl-result').innerText.includes('Nothing redriven: 404')",
            Duration::from_secs(20),
        )
        .await;
    waiting_letters(&mut browser, false).await;

    // Another group chosen: the list on show goes, so its marks cannot be sent to it.
    browser
        .eval(
            "const menu = document.getElementById('dl-group');\
             menu.value = [...menu.options].map(o => o.value).find(v => v !== 'audit-archive');\
             menu.dispatchEvent(new Event('change')); true",
        )
        .await;
    assert_eq!(browser.eval(letters).await, 0);
    assert_eq!(
        browser
            .eval("document.getElementById('dl-redrive-all').disabled")
            .await,
        true
    );
    waiting_letters(&mut browser, true).await;

    // The fix (the schema deployed), then "redrive all" and its confirmation.
    archive.terminate().await;
    let _archive = HeraldProcess::start(
        "audit-log",
        &up.kafka,
        &archive_db,
        &[("CONSUMER_GROUP", group.as_str())],
    )
    .await;
    browser
        .eval("document.getElementById('dl-redrive-all').click(); true")
        .await;
    let question = browser.text("dl-confirm-text").await;
    assert!(
        question.contains("Publish 2 dead letters of audit-archive"),
        "{question}"
    );
    browser.screenshot("redrive-confirmation").await;
    browser
        .eval("document.getElementById('dl-confirm-yes').click(); true")
        .await;
    browser
        .wait_for(
            "the redrive",
            "document.getElementById('dl-result').innerText.includes('Redriven: 2')",
            Duration::from_secs(30),
        )
        .await;
    browser
        .wait_for(
            "the letters marked",
            "document.getElementById('dl-status').innerText.includes('0 waiting of 2')",
            Duration::from_secs(20),
        )
        .await;
    browser.screenshot("dead-letters-redriven").await;

    // Applied once each by the fixed consumer, and never twice.
    let listed: Value = support::client()
        .get(format!(
            "{}/api/v1/admin/dead-letters/audit-archive",
            up.base
        ))
        .bearer_auth(up.token("root", "admin"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<uuid::Uuid> = listed["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    support::eventually(
        Duration::from_secs(60),
        "the redriven events applied",
        || async {
            let rows = support::audit::rows_by_id(&archive_db).await;
            if ids.iter().all(|id| rows.get(id) == Some(&1)) {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = support::audit::rows_by_id(&archive_db).await;
    assert!(ids.iter().all(|id| rows.get(id) == Some(&1)), "{rows:?}");
    eprintln!("console screenshots: {}", lag_shot.display());
    up.assert_no_panic();
}
