//! Headless Chromium (Debian's), driven over the DevTools protocol on a pipe: the test
//! loads pages, runs script in them as a user's clicks would, reads what they show, and
//! keeps screenshots.
//!
//! `--remote-debugging-pipe` makes Chromium read commands from its file descriptor 3 and
//! write answers to 4, each a JSON message ended by a NUL byte; a shell maps our pipes there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub struct Browser {
    _child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
    next_id: u64,
    session: String,
    /// Where screenshots go.
    pub artifacts: PathBuf,
}

impl Browser {
    /// Chromium with a profile of its own in `dir`, one blank tab attached; screenshots are
    /// written to `artifacts`.
    pub async fn launch(dir: &Path, artifacts: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::create_dir_all(artifacts).unwrap();
        let profile = dir.join("profile");
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                "exec chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
                 --no-first-run --no-default-browser-check --window-size=1280,1600 \
                 --remote-debugging-pipe --user-data-dir=\"$1\" about:blank \
                 3<&0 4>&1 0</dev/null 1>&2",
            )
            .arg("chromium")
            .arg(&profile)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("chromium (infra/scripts/services.sh installs it)");
        let mut browser = Self {
            commands: child.stdin.take().unwrap(),
            answers: BufReader::new(child.stdout.take().unwrap()),
            _child: child,
            next_id: 0,
            session: String::new(),
            artifacts: artifacts.to_path_buf(),
        };
        let target = browser
            .send(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// One DevTools command, to the browser (`session` None) or the tab; its result.
    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).await.unwrap();
        self.commands.flush().await.unwrap();
        let deadline = Duration::from_secs(60);
        tokio::time::timeout(deadline, async {
            loop {
                let mut buffer = Vec::new();
                let read = self.answers.read_until(0, &mut buffer).await.unwrap();
                assert!(read > 0, "chromium closed its pipe during {method}");
                buffer.pop();
                let answer: Value = serde_json::from_slice(&buffer).unwrap();
                // Events (no id) and answers to nothing we wait for are passed over.
                if answer["id"] == id {
                    assert!(answer["error"].is_null(), "{method}: {answer}");
                    return answer["result"].clone();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("chromium did not answer {method} within {deadline:?}"))
    }

    /// Opens `url` in the tab and waits for it to have loaded.
    pub async fn goto(&mut self, url: &str) {
        let session = self.session.clone();
        self.send(Some(&session), "Page.navigate", json!({"url": url}))
            .await;
        self.wait_for(
            &format!("{url} loaded"),
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            Duration::from_secs(30),
        )
        .await;
    }

    /// The value of `expression` in the page (awaited when it is a promise); a script error
    /// fails the test.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let session = self.session.clone();
        let result = self
            .send(
                Some(&session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// The text of the element with this id, as shown.
    pub async fn text(&mut self, id: &str) -> String {
        self.eval(&format!(
            "(document.getElementById({id:?}) || {{}}).innerText || ''"
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Polls `expression` until it is truthy (what it is then), failing after `within`.
    pub async fn wait_for(&mut self, what: &str, expression: &str, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(expression).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            if started.elapsed() > within {
                let shown = self.eval("document.body.innerText").await;
                panic!("{what}: not seen within {within:?}; the page shows:\n{shown}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The whole page as a PNG, kept as `<artifacts>/<name>.png`; its path.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let session = self.session.clone();
        let shot = self
            .send(
                Some(&session),
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}
