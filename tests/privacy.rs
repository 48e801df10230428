//! Personal data, as a person and an operator meet it on `herald up` with its own broker, so
//! that everything the system writes is under one data folder and can be searched byte for
//! byte: a canary email, phone and name are registered and used, appear in plain text nowhere
//! on the log, are readable where they should be, and after the person's erasure appear in
//! plain text nowhere on disk at all, while other people's events, posted all along, are all
//! there and readable and the audit chain still verifies.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const PASSWORD: &str = "correct horse battery staple";

/// Where a `herald up` of a test keeps its data: its data folder, and the PostgreSQL
/// database it uses instead of the folder's SQLite file, if any.
struct Site {
    data: PathBuf,
    database: Option<String>,
}

impl Site {
    fn sqlite(data: &Path) -> Self {
        Self {
            data: data.to_path_buf(),
            database: None,
        }
    }
}

fn herald(site: &Site) -> Command {
    let data = &site.data;
    let mut command = Command::new(HERALD);
    match &site.database {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    command
        .env_remove("KAFKA_BROKERS")
        .env_remove("JWT_HS256_SECRET")
        .env_remove("REDIS_URL")
        .env_remove("PRIVACY_KEY_FILE")
        .env("HERALD_DATA_DIR", data)
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_KAFKA_PORT", "0")
        .env("RATE_LIMITS_OFF", "true")
        // Logs at info: what the services log about people is part of what is searched.
        .env("RUST_LOG", "info");
    command
}

/// Stops the broker `herald up` started for `data` when the test ends, however it ends (a
/// `herald up` killed with SIGKILL leaves it running).
struct StopsBroker(PathBuf);

impl Drop for StopsBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new(HERALD)
            .args(["broker", "stop", "--data-dir"])
            .arg(&self.0)
            .output();
    }
}

/// `herald up` on `data`, its standard error appended to the data folder's log.
async fn up(site: &Site) -> (Child, String) {
    let data = &site.data;
    std::fs::create_dir_all(data).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("herald-up.log"))
        .unwrap();
    let mut command = herald(site);
    command.arg("up").stderr(Stdio::from(log));
    support::announced(command, Duration::from_secs(180)).await
}

async fn cli(site: &Site, args: &[&str]) -> String {
    let out = herald(site).args(args).output().await.unwrap();
    assert!(
        out.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn token(site: &Site, sub: &str, role: &str) -> String {
    cli(site, &["token", "--sub", sub, "--role", role])
        .await
        .trim()
        .to_string()
}

/// The canaries: strings that exist nowhere but where this person's data went.
struct Canaries {
    email: String,
    phone: String,
    name: String,
}

impl Canaries {
    fn new() -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let digits = (uuid::Uuid::new_v4().as_u128() % 10_000_000) as u32;
        Self {
            email: format!("canary-{tag}@example.com"),
            phone: format!("+1555{digits:07}"),
            name: format!("Zebulon Canary{tag}"),
        }
    }

    fn all(&self) -> [&str; 3] {
        [&self.email, &self.phone, &self.name]
    }
}

/// Every file under `dir` that holds one of the canaries, with the canary. The outbox folder
/// is left out: it is where `herald up` delivers email, and delivered email is outside the
/// system (as it is once an SMTP server has taken it).
fn scan(dir: &Path, canaries: &Canaries) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "outbox") {
                    stack.push(path);
                }
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            for canary in canaries.all() {
                if memfind(&bytes, canary.as_bytes()) {
                    found.push((path.clone(), canary.to_string()));
                }
            }
        }
    }
    found.sort();
    found
}

fn memfind(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// The files of the broker's log (its segments), among `found`.
fn on_the_log<'a>(data: &Path, found: &'a [(PathBuf, String)]) -> Vec<&'a (PathBuf, String)> {
    let kafka = data.join("kafka");
    found
        .iter()
        .filter(|(path, _)| path.starts_with(&kafka) && !path.ends_with("broker.log"))
        .collect()
}

async fn call(
    method: reqwest::Method,
    url: String,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = support::client().request(method, url);
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let Ok(response) = request.send().await else {
        // The process is down (killed on purpose): no answer.
        return (0, Value::Null);
    };
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn message(id: &str, recipient: &str, body: &str) -> Value {
    json!({"type": "message.sent", "key": "c-1",
           "data": {"message_id": id, "conversation_id": "c-1",
                    "recipient_id": recipient, "body": body}})
}

/// Replays the users and messages topics into a file; its lines.
async fn replay(site: &Site, name: &str) -> Vec<Value> {
    let out = site.data.join(name);
    cli(
        site,
        &[
            "replay",
            "--topics",
            "users,messages",
            "--from",
            "2020-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_person_is_nowhere_on_disk_and_everyone_else_is_intact() {
    let data = support::test_dir(&format!("privacy-{}", uuid::Uuid::new_v4().simple()));
    erasure(Site::sqlite(&data), None).await;
}

/// The same with every service's tables on PostgreSQL, whose own files are searched too:
/// its tables, the old row versions it keeps until it vacuums, its write-ahead log. The
/// personal columns are encrypted there, so the canaries are never written in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_database_files_never_hold_the_person_in_plain_text() {
    let data = support::test_dir(&format!("privacy-pg-{}", uuid::Uuid::new_v4().simple()));
    let database = support::audit::fresh_postgres().await;
    let server = PostgresFiles::of(&database).await;
    let site = Site {
        data,
        database: Some(database),
    };
    erasure(site, Some(server)).await;
}

/// The files of the PostgreSQL server a test uses.
struct PostgresFiles {
    pool: sqlx::PgPool,
    dir: PathBuf,
}

impl PostgresFiles {
    async fn of(url: &str) -> Self {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let (dir,): (String,) = sqlx::query_as("SHOW data_directory")
            .fetch_one(&pool)
            .await
            .expect("the test role reads the server's settings (infra/scripts/services.sh)");
        let dir = PathBuf::from(dir);
        assert!(
            std::fs::read_dir(dir.join("base")).is_ok(),
            "the test must read {} (run it as root, or as the server's owner)",
            dir.display()
        );
        Self { pool, dir }
    }

    /// Every file of the server holding a canary, once what it holds in memory is written.
    async fn scan(&self, canaries: &Canaries) -> Vec<(PathBuf, String)> {
        sqlx::query("CHECKPOINT")
            .execute(&self.pool)
            .await
            .expect("the test role may checkpoint (infra/scripts/services.sh)");
        scan(&self.dir, canaries)
    }
}

/// A person registers, uses the system and erases themself while others post; afterwards
/// nothing of them is on disk under the data folder or in `postgres`'s files.
async fn erasure(site: Site, postgres: Option<PostgresFiles>) {
    let data = site.data.clone();
    let _broker = StopsBroker(data.clone());
    let (mut child, base) = up(&site).await;
    let canary = Canaries::new();
    let api = |path: &str| format!("{base}{path}");

    // The person registers, with a phone, and signs in.
    let (status, _) = call(
        reqwest::Method::POST,
        api("/api/v1/auth/register"),
        None,
        Some(json!({"email": canary.email, "password": PASSWORD,
                    "display_name": canary.name, "phone": canary.phone})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, session) = call(
        reqwest::Method::POST,
        api("/api/v1/auth/login"),
        None,
        Some(json!({"email": canary.email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 200, "{session}");
    let access = session["access_token"].as_str().unwrap().to_string();
    let (_, me) = call(reqwest::Method::GET, api("/api/v1/me"), Some(&access), None).await;
    let person = me["id"].as_str().unwrap().to_string();

    // Others, each with a token of their own, and the person, use the system: orders (which
    // email the person) and messages (the person's naming themself).
    let others: Vec<String> = (0..3).map(|i| format!("other-{i}")).collect();
    let mut other_tokens = Vec::new();
    for other in &others {
        other_tokens.push(token(&site, other, "user").await);
    }
    let (status, _) = call(
        reqwest::Method::POST,
        api("/api/v1/events"),
        Some(&access),
        Some(support::order_of("o-canary", &person)),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _) = call(
        reqwest::Method::POST,
        api("/api/v1/events"),
        Some(&access),
        Some(message(
            &uuid::Uuid::new_v4().to_string(),
            &others[0],
            &format!("hello, {} here, call me on {}", canary.name, canary.phone),
        )),
    )
    .await;
    assert_eq!(status, 202);

    // Until the consumers have it: the person's message found by its recipient, the order's
    // email delivered to the person's address.
    let recipient = other_tokens[0].clone();
    support::eventually(Duration::from_secs(60), "the message in search", || async {
        let (_, found) = call(
            reqwest::Method::GET,
            api("/api/v1/search?q=hello"),
            Some(&recipient),
            None,
        )
        .await;
        match found["total"].as_u64() {
            Some(1) => Ok(()),
            _ => Err(format!("{found}")),
        }
    })
    .await;
    support::eventually(Duration::from_secs(60), "the order's email", || async {
        let (_, page) = call(
            reqwest::Method::GET,
            api("/api/v1/me/notifications"),
            Some(&access),
            None,
        )
        .await;
        let sent = page["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|d| d["event_type"] == "order.placed" && d["channel"] == "email")
                    .count()
            })
            .unwrap_or(0);
        if sent == 1 {
            Ok(())
        } else {
            Err(format!("{page}"))
        }
    })
    .await;

    // The log holds none of it in plain text; the derived copies do, as they should. The
    // database never does.
    if let Some(postgres) = &postgres {
        let held = postgres.scan(&canary).await;
        eprintln!("canaries in PostgreSQL's files before the erasure: {held:?}");
        assert!(
            held.is_empty(),
            "personal data in plain text in PostgreSQL: {held:?}"
        );
    }
    // The search index merges its segments in the background: a file read while a merge
    // replaces it can be gone, so the scan is repeated until the copy is seen.
    let before = support::eventually(
        Duration::from_secs(20),
        "a derived copy of the person's data on disk",
        || async {
            let found = scan(&data, &canary);
            if found.is_empty() {
                Err("none found")
            } else {
                Ok(found)
            }
        },
    )
    .await;
    eprintln!(
        "canaries before the erasure: {} (file, canary) pairs",
        before.len()
    );
    for (path, canary) in &before {
        eprintln!("  {canary} in {}", path.display());
    }
    assert!(
        on_the_log(&data, &before).is_empty(),
        "personal data in plain text on the log: {:?}",
        on_the_log(&data, &before)
    );
    assert!(
        !before.is_empty(),
        "nothing derived holds the person's data"
    );
    // Readers with the keys see it: a replay, and the audit log for an admin.
    let lines = replay(&site, "replay-before.jsonl").await;
    let registered = lines
        .iter()
        .find(|l| l["event_type"] == "user.registered" && l["data"]["user_id"] == person)
        .expect("the registration replayed");
    assert_eq!(registered["data"]["email"], canary.email.as_str());
    std::fs::remove_file(data.join("replay-before.jsonl")).unwrap();
    let tailed = cli(
        &site,
        &[
            "tail",
            "users",
            "--last",
            "100",
            "--type",
            "user.registered",
        ],
    )
    .await;
    assert!(tailed.contains(&canary.email), "{tailed}");
    // The person's export holds it all, from every service.
    let (status, export) = call(
        reqwest::Method::GET,
        api("/api/v1/me/export"),
        Some(&access),
        None,
    )
    .await;
    assert_eq!(status, 200, "{export}");
    let exported = export.to_string();
    for canary in canary.all() {
        assert!(exported.contains(canary), "{canary} missing from {export}");
    }
    assert_eq!(
        export["data"]["auth"]["account"]["email"],
        canary.email.as_str()
    );

    // The others keep posting messages while the person erases themself.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut posting = Vec::new();
    for (other, token) in others.iter().zip(&other_tokens) {
        let (api, token, stop, other) = (api(""), token.clone(), stop.clone(), other.clone());
        posting.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let id = uuid::Uuid::new_v4().to_string();
                let (status, _) = call(
                    reqwest::Method::POST,
                    format!("{api}/api/v1/events"),
                    Some(&token),
                    Some(message(&id, "someone", &format!("{other} says {i}"))),
                )
                .await;
                if status == 202 {
                    acked.push(id);
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = call(
        reqwest::Method::DELETE,
        api("/api/v1/me"),
        Some(&access),
        None,
    )
    .await;
    assert_eq!(status, 204);
    // Killed mid-erasure: the consumers may not have read `user.erased` yet.
    child.kill().await.unwrap();
    stop.cancel();
    let mut acked = Vec::new();
    for task in posting {
        acked.extend(task.await.unwrap());
    }
    assert!(
        !acked.is_empty(),
        "no message of the others was acknowledged"
    );
    let (child, base) = up(&site).await;
    let api = |path: &str| format!("{base}{path}");

    // Nothing anywhere on disk once the consumers have read the erasure.
    let erasing = std::time::Instant::now();
    let last = std::sync::Mutex::new(usize::MAX);
    support::eventually(Duration::from_secs(90), "no canary on disk", || async {
        let left = scan(&data, &canary);
        if std::mem::replace(&mut *last.lock().unwrap(), left.len()) != left.len() {
            eprintln!("{:?} after the restart: {left:?}", erasing.elapsed());
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    eprintln!(
        "canaries after the erasure: 0 (reached {:?} after the restart)",
        erasing.elapsed()
    );
    if let Some(postgres) = &postgres {
        let held = postgres.scan(&canary).await;
        eprintln!("canaries in PostgreSQL's files after the erasure: {held:?}");
        assert!(
            held.is_empty(),
            "personal data in plain text in PostgreSQL: {held:?}"
        );
    }

    // Readers show the person's fields as erased; the others' messages are all there, plain.
    let lines = replay(&site, "replay-after.jsonl").await;
    let registered = lines
        .iter()
        .find(|l| l["event_type"] == "user.registered" && l["data"]["user_id"] == person)
        .expect("the registration replayed");
    assert_eq!(registered["data"]["email"], "[erased]");
    assert_eq!(registered["data"]["display_name"], "[erased]");
    let tailed = cli(
        &site,
        &[
            "tail",
            "users",
            "--last",
            "100",
            "--type",
            "user.registered",
        ],
    )
    .await;
    assert!(
        tailed.contains("[erased]") && !tailed.contains(&canary.email),
        "{tailed}"
    );
    let replayed: std::collections::HashMap<String, &Value> = lines
        .iter()
        .filter(|l| l["event_type"] == "message.sent")
        .map(|l| (l["data"]["message_id"].as_str().unwrap().to_string(), l))
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !replayed.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    for id in &acked {
        let body = replayed[id]["data"]["body"].as_str().unwrap();
        assert!(
            body.contains(" says "),
            "another's message unreadable: {body}"
        );
    }
    eprintln!(
        "others' messages acknowledged during the erasure: {}, all replayed in plain text",
        acked.len()
    );
    let admin = token(&site, "root", "admin").await;
    let (status, page) = call(
        reqwest::Method::GET,
        api(&format!("/api/v1/audit?actor={person}&type=message.sent")),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["data"]["body"], "[erased]", "{page}");
    // The export holds nothing of the person any more: not theirs, not an admin's.
    for (path, bearer) in [
        ("/api/v1/me/export".to_string(), &access),
        (format!("/api/v1/admin/subjects/{person}/export"), &admin),
    ] {
        let (status, export) = call(reqwest::Method::GET, api(&path), Some(bearer), None).await;
        assert_eq!(status, 200, "{export}");
        let exported = export.to_string();
        for canary in canary.all() {
            assert!(!exported.contains(canary), "{canary} still in {export}");
        }
    }
    // The audit chain, which hashed the ciphertext, still verifies.
    let verified = cli(&site, &["audit", "verify"]).await;
    eprintln!("{verified}");
    // Nothing more is accepted about the person: their token's account is gone.
    let (status, _) = call(reqwest::Method::GET, api("/api/v1/me"), Some(&access), None).await;
    assert!(status == 401 || status == 404, "{status}");
    drop(child);
}

/// Registers a person through the API; their account's id and access token.
async fn register(base: &str, email: &str, name: &str, phone: &str) -> (String, String) {
    let (status, _) = call(
        reqwest::Method::POST,
        format!("{base}/api/v1/auth/register"),
        None,
        Some(json!({"email": email, "password": PASSWORD, "display_name": name, "phone": phone})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, session) = call(
        reqwest::Method::POST,
        format!("{base}/api/v1/auth/login"),
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, 200, "{session}");
    let access = session["access_token"].as_str().unwrap().to_string();
    let (_, me) = call(
        reqwest::Method::GET,
        format!("{base}/api/v1/me"),
        Some(&access),
        None,
    )
    .await;
    (me["id"].as_str().unwrap().to_string(), access)
}

/// Stops `herald up` as an operator does (SIGTERM), and waits for it.
async fn stop(mut child: Child) {
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("herald up stops within a minute")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_encryption_key_rotation_then_a_restart_reads_every_record() {
    let data = support::test_dir(&format!("rotate-{}", uuid::Uuid::new_v4().simple()));
    let site = Site::sqlite(&data);
    let _broker = StopsBroker(data.clone());
    let (child, base) = up(&site).await;
    let mut people = Vec::new();
    for i in 0..5 {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let email = format!("rotate-{i}-{}@example.com", &tag[..8]);
        let (id, access) = register(&base, &email, &format!("Person {i}"), "+15550100").await;
        let (status, _) = call(
            reqwest::Method::POST,
            format!("{base}/api/v1/events"),
            Some(&access),
            Some(message(
                &uuid::Uuid::new_v4().to_string(),
                "someone",
                &format!("note {i}"),
            )),
        )
        .await;
        assert_eq!(status, 202);
        people.push((id, email));
    }
    let keys = data.join("privacy-keys");
    let old = std::fs::read_to_string(&keys).unwrap();
    let rotated = cli(&site, &["privacy", "rotate-key"]).await;
    eprintln!("{rotated}");
    assert!(rotated.contains("rewrapped"), "{rotated}");
    // Every data key is wrapped by the new key: the old one leaves the file, and the
    // system, restarted, reads every record with the new one alone.
    let now = std::fs::read_to_string(&keys).unwrap();
    let new = now.lines().next().unwrap().to_string();
    assert!(!old.contains(&new), "the new key is new");
    std::fs::write(&keys, format!("{new}\n")).unwrap();
    stop(child).await;
    let (child, base) = up(&site).await;
    let lines = replay(&site, "replay-rotated.jsonl").await;
    for (id, email) in &people {
        let registered = lines
            .iter()
            .find(|l| l["event_type"] == "user.registered" && l["data"]["user_id"] == *id)
            .expect("the registration replayed");
        assert_eq!(registered["data"]["email"], email.as_str());
        let note = lines
            .iter()
            .find(|l| l["event_type"] == "message.sent" && l["actor"] == *id)
            .expect("the message replayed");
        assert!(
            note["data"]["body"].as_str().unwrap().starts_with("note "),
            "{note}"
        );
    }
    // New people are protected and read as well.
    let (id, _) = register(&base, "after-rotation@example.com", "After", "+15550101").await;
    let lines = replay(&site, "replay-after-rotation.jsonl").await;
    assert!(lines.iter().any(|l| l["event_type"] == "user.registered"
        && l["data"]["user_id"] == id
        && l["data"]["email"] == "after-rotation@example.com"));
    eprintln!(
        "rotation: {} records read back after the restart with the new key alone",
        lines.len()
    );
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_accounts_are_erased_for_good_after_the_retention_period() {
    let data = support::test_dir(&format!("retention-{}", uuid::Uuid::new_v4().simple()));
    let site = Site::sqlite(&data);
    let _broker = StopsBroker(data.clone());
    let (child, base) = up(&site).await;
    let (kept, _) = register(&base, "recent@example.com", "Recent", "+15550110").await;
    let (old, _) = register(&base, "long-gone@example.com", "Long Gone", "+15550111").await;
    // Both deleted the old way (deleted_at only, personal data kept), one long ago.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("herald.db").display()))
        .await
        .unwrap();
    let now_us = jiff::Timestamp::now().as_microsecond();
    for (id, at) in [(&kept, now_us), (&old, now_us - 31 * 86_400_000_000)] {
        sqlx::query("UPDATE auth_accounts SET deleted_at = $2 WHERE id = $1")
            .bind(id)
            .bind(at)
            .execute(&db)
            .await
            .unwrap();
    }
    let ran = cli(&site, &["privacy", "erase-deleted"]).await;
    assert!(ran.contains(": 1 deleted account(s)"), "{ran}");
    let row = |id: String| {
        let db = db.clone();
        async move {
            sqlx::query_as::<_, (String, Option<i64>)>(
                "SELECT email, erased_at FROM auth_accounts WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let (email, erased_at) = row(old.clone()).await;
    assert_eq!(email, "");
    assert!(erased_at.is_some());
    // The other is kept, its email encrypted as every account's is.
    let (email, erased_at) = row(kept.clone()).await;
    assert!(email.starts_with("personal:v1:"), "{email}");
    assert_eq!(erased_at, None);
    // Its erasure is on the log, and its fields read as erased.
    let lines = replay(&site, "replay-retention.jsonl").await;
    assert!(
        lines
            .iter()
            .any(|l| l["event_type"] == "user.erased" && l["data"]["user_id"] == old)
    );
    let registered = lines
        .iter()
        .find(|l| l["event_type"] == "user.registered" && l["data"]["user_id"] == old)
        .unwrap();
    assert_eq!(registered["data"]["email"], "[erased]");
    // A second run finds nothing more to do.
    let again = cli(&site, &["privacy", "erase-deleted"]).await;
    assert!(again.contains(": 0 deleted account(s)"), "{again}");
    stop(child).await;
}
