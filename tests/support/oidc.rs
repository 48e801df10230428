//! A real OpenID Connect provider on loopback (`infra/scripts/oidc/provider.mjs`: panva's
//! certified oidc-provider on Node, installed by `infra/scripts/services.sh`), and a browser
//! that signs in through it: it follows redirects, keeps cookies per origin and path, and
//! fills the provider's own login and consent forms.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

pub struct OidcProvider {
    pub issuer: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl OidcProvider {
    /// Starts the provider; it answers 503 until [`OidcProvider::configure`].
    pub async fn start() -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/infra/scripts/oidc/provider.mjs"
        );
        let mut child = Command::new("node")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (infra/scripts/services.sh installs the provider)");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the provider starts within 30 s")
            .unwrap()
            .expect("the provider prints its address");
        let issuer = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("not an address: {line}"))
            .to_string();
        Self {
            issuer,
            child,
            stdin,
            lines,
        }
    }

    /// Registers Herald as client `client_id` (secret `client_secret`) with its callback,
    /// and the accounts one can sign in as (id to claims).
    pub async fn configure(
        &mut self,
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
        accounts: Value,
    ) {
        let setup = json!({
            "clients": [{"client_id": client_id, "client_secret": client_secret,
                         "redirect_uris": [redirect_uri]}],
            "accounts": accounts,
        });
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{setup}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("the provider is configured within 30 s")
            .unwrap();
        assert_eq!(line.as_deref(), Some("ready"));
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A browser: its own cookie jar, no automatic redirects (each hop is seen).
pub struct Browser {
    client: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.client.get(url).send().await.unwrap()
    }

    /// Opens `start` (Herald's start route) and goes through the provider as `login` would,
    /// up to the redirect back to Herald; answers that callback URL, not yet opened.
    pub async fn through_provider(&self, start: &str, login: &str) -> String {
        let mut url = reqwest::Url::parse(start).unwrap();
        let mut form: Option<Vec<(&str, String)>> = None;
        for _ in 0..20 {
            let request = match form.take() {
                Some(fields) => self.client.post(url.clone()).form(&fields),
                None => self.client.get(url.clone()),
            };
            let response = request.send().await.unwrap();
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()["location"].to_str().unwrap().to_string();
                let next = url.join(&location).unwrap();
                if next.path().contains("/api/v1/auth/oidc/") && next.path().ends_with("/callback")
                {
                    return next.into();
                }
                url = next;
                continue;
            }
            let page = response.text().await.unwrap();
            assert_eq!(status, 200, "{url}: {page}");
            // The provider's own pages: a login form, then a consent form, posting to
            // themselves.
            form = Some(if page.contains("name=\"login\"") {
                vec![
                    ("prompt", "login".into()),
                    ("login", login.into()),
                    ("password", "any".into()),
                ]
            } else if page.contains("consent") {
                vec![("prompt", "consent".into())]
            } else {
                panic!("an unexpected page at {url}: {page}");
            });
        }
        panic!("no way back to Herald after 20 hops");
    }
}
