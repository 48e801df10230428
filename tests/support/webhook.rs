//! A chat webhook (Slack-compatible): keeps the JSON body of every message posted to it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;

type Messages = Arc<Mutex<Vec<Value>>>;

pub struct Webhook {
    pub url: String,
    messages: Messages,
}

async fn receive(State(messages): State<Messages>, axum::Json(body): axum::Json<Value>) {
    messages.lock().unwrap().push(body);
}

impl Webhook {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/alerts", listener.local_addr().unwrap());
        let messages = Messages::default();
        let app = Router::new()
            .route("/hooks/alerts", post(receive))
            .with_state(messages.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, messages }
    }

    /// The `text` of every message received so far.
    pub fn texts(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Waits until `n` messages arrived (panics after `within`); then waits `settle` more, so
    /// a message too many would be seen too.
    pub async fn wait_for(&self, n: usize, within: Duration, settle: Duration) -> Vec<String> {
        super::eventually(within, &format!("{n} webhook messages"), || async {
            let texts = self.texts();
            if texts.len() >= n {
                Ok(())
            } else {
                Err(format!("{texts:#?}"))
            }
        })
        .await;
        tokio::time::sleep(settle).await;
        self.texts()
    }
}
