//! Live messages through the real pipeline (`herald ingress`, the broker, `herald
//! notifications`) to WebSocket and event-stream clients:
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench live
//!
//! 1. To one connection: a user holds one WebSocket; BENCH_MESSAGES (5,000) `message.sent`
//!    events for them are posted in batches of 100; live messages received per second, from
//!    the first to the last, each counted once. Then the same with an event stream instead.
//! 2. Connections held: BENCH_SOCKETS (10,000) WebSockets, eight per user, opened to one
//!    process; its resident memory before and after, per connection, and how many fit in the
//!    512 MiB the Kubernetes manifest gives the service. Then one message to one user, which
//!    must reach each of that user's eight sockets.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{herald, ingress_on, setting, status_kb, token, topic_prefix};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The memory the Kubernetes manifest allows the notifications service.
const BUDGET_MB: f64 = 512.0;

async fn socket(base: &str, bearer: &str) -> Socket {
    let url = format!("{}/api/v1/stream", base.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024);
    tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .expect("the upgrade is accepted")
        .0
}

fn message(recipient: &str, n: usize) -> Value {
    json!({"type": "message.sent", "data": {
        "message_id": Uuid::new_v4(), "conversation_id": "bench",
        "recipient_id": recipient, "body": format!("message {n}")
    }})
}

async fn post(client: &reqwest::Client, ingress: &str, bearer: &str, events: Vec<Value>) {
    for chunk in events.chunks(100) {
        let response = client
            .post(format!("{ingress}/api/v1/events"))
            .bearer_auth(bearer)
            .json(&json!({ "events": chunk }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
}

/// Where live messages arrive, for part 1.
enum Receiver {
    Socket(Socket),
    Stream(reqwest::Response, String),
}

impl Receiver {
    /// The event id of the next live message.
    async fn next(&mut self) -> String {
        match self {
            Receiver::Socket(socket) => loop {
                match socket.next().await.expect("open").expect("no error") {
                    Message::Text(text) => {
                        let data: Value = serde_json::from_str(&text).unwrap();
                        return data["event_id"].as_str().unwrap().to_string();
                    }
                    _ => continue,
                }
            },
            Receiver::Stream(response, buffer) => loop {
                if let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id: ")) {
                        return id.to_string();
                    }
                    continue;
                }
                let chunk = response.chunk().await.unwrap().expect("open");
                buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            },
        }
    }
}

/// Posts `messages` events for `user` and times their arrival at `receiver`.
async fn to_one(
    client: &reqwest::Client,
    ingress: &str,
    publisher: &str,
    user: &str,
    mut receiver: Receiver,
    messages: usize,
    what: &str,
) {
    let events: Vec<Value> = (0..messages).map(|n| message(user, n)).collect();
    let posting = {
        let (client, ingress, publisher) =
            (client.clone(), ingress.to_string(), publisher.to_string());
        tokio::spawn(async move { post(&client, &ingress, &publisher, events).await })
    };
    let mut seen = HashSet::new();
    let mut first = None;
    while seen.len() < messages {
        let id = tokio::time::timeout(Duration::from_secs(120), receiver.next())
            .await
            .expect("messages keep arriving");
        first.get_or_insert_with(Instant::now);
        assert!(seen.insert(id), "a message arrived twice");
    }
    let span = first.unwrap().elapsed().as_secs_f64();
    posting.await.unwrap();
    println!(
        "to one connection ({what}): {messages} live messages, each once, in {span:.2} s first to last: {:.0} messages/s",
        (messages - 1) as f64 / span
    );
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let messages = setting("BENCH_MESSAGES", 5000) as usize;
    let sockets = setting("BENCH_SOCKETS", 10_000) as usize;
    let prefix = topic_prefix("livebench");
    let dir = std::env::temp_dir().join(format!("herald-bench-live-{}", &prefix[..17]));
    std::fs::create_dir_all(&dir).unwrap();
    let (_ingress, ingress, common) = ingress_on(brokers.as_str(), &prefix).await;
    let database = format!("sqlite://{}", dir.join("notify.db").display());
    let connections = (2 * sockets + 100).to_string();
    // Welcome emails go to a folder: only live messages are measured.
    let outbox = dir.join("outbox").display().to_string();
    let mut env = common.to_vec();
    env.extend([
        ("DATABASE_URL", database.as_str()),
        ("NOTIFY_EMAIL_OUTBOX", outbox.as_str()),
        ("MAX_CONNECTIONS", connections.as_str()),
    ]);
    let (notifier, base) = herald("notifications", &env).await;
    let pid = notifier.id().unwrap();
    let client = reqwest::Client::new();
    // The sender of the messages, who also registers the users (as the auth service would).
    let publisher = platform::auth::mint_hs256(
        &secrecy::SecretString::from(common::SECRET),
        "bench",
        &["user".to_string(), "service".to_string()],
        "herald",
        "herald",
        Duration::from_secs(7200),
    )
    .unwrap();

    // 1. One user, known to the service, on one connection at a time.
    let user = Uuid::new_v4().to_string();
    post(
        &client,
        &ingress,
        &publisher,
        vec![json!({"type": "user.registered", "data": {
            "user_id": user, "email": "live@example.com", "display_name": "Live"}})],
    )
    .await;
    let bearer = token(&user, "user");
    let mut warm = Receiver::Socket(socket(&base, &bearer).await);
    // The first message arrives once the service knows the user.
    post(&client, &ingress, &publisher, vec![message(&user, 0)]).await;
    tokio::time::timeout(Duration::from_secs(120), warm.next())
        .await
        .expect("the user is known within two minutes");
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let through_socket = Receiver::Socket(socket(&base, &bearer).await);
    let run = |receiver, what| {
        to_one(
            &client, &ingress, &publisher, &user, receiver, messages, what,
        )
    };
    run(through_socket, "WebSocket").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stream = client
        .get(format!("{base}/api/v1/stream"))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    run(Receiver::Stream(stream, String::new()), "event stream").await;

    // 2. Many sockets on one process.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kb = status_kb(pid, "VmRSS:");
    let users: Vec<String> = (0..sockets.div_ceil(8))
        .map(|_| Uuid::new_v4().to_string())
        .collect();
    let bearers: Vec<String> = users.iter().map(|u| token(u, "user")).collect();
    let started = Instant::now();
    let opened: Vec<Socket> = futures_util::stream::iter((0..sockets).map(|i| {
        let (base, bearer) = (base.clone(), bearers[i / 8].clone());
        async move { socket(&base, &bearer).await }
    }))
    .buffered(32)
    .collect()
    .await;
    let opening = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_kb = status_kb(pid, "VmRSS:");
    let per_kb = after_kb.saturating_sub(before_kb) as f64 / sockets as f64;
    let fit = ((BUDGET_MB * 1024.0 - before_kb as f64) / per_kb).floor();
    println!(
        "connections held: {sockets} WebSockets ({} users x 8) opened in {opening:.1} s; \
         RSS {:.1} MB before, {:.1} MB after: {per_kb:.1} KB per connection; \
         {BUDGET_MB} MB holds about {fit:.0}",
        users.len(),
        before_kb as f64 / 1024.0,
        after_kb as f64 / 1024.0,
    );
    // Everyone is still connected: one message to the last user reaches their eight.
    let last = users.last().unwrap().clone();
    post(
        &client,
        &ingress,
        &publisher,
        vec![json!({"type": "user.registered", "data": {
            "user_id": last, "email": "last@example.com", "display_name": "Last"}})],
    )
    .await;
    let theirs: Vec<Socket> = opened.into_iter().skip((users.len() - 1) * 8).collect();
    let sent = Instant::now();
    post(&client, &ingress, &publisher, vec![message(&last, 1)]).await;
    let mut reached = 0;
    for socket in theirs {
        let mut receiver = Receiver::Socket(socket);
        if tokio::time::timeout(Duration::from_secs(120), receiver.next())
            .await
            .is_ok()
        {
            reached += 1;
        }
    }
    println!(
        "with {sockets} open: a message to one user reached {reached} of their 8 sockets within {:.2} s of its POST",
        sent.elapsed().as_secs_f64()
    );
}
