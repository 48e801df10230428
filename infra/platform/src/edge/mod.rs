//! The edge every service's HTTP API shares, as one layer: request ids, rate limits per IP
//! and per user, CORS from an allowlist, `Deprecation`/`Sunset` headers on deprecated
//! routes, and one log line per request (method, route, status, latency, request id, user)
//! with bodies only on request and then with their secrets redacted.

pub mod rate;
pub mod redact;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use tracing::Instrument;

use crate::auth::Authenticator;
use crate::problem::Problem;
use crate::trace::TraceContext;
use rate::{Count, LocalCounters, Rate, RedisCounters, RouteRate};

/// Settings of the edge layer.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// Requests per client IP for calls without a valid token, e.g. 60/1m, 1000/day.
    #[arg(long, env = "RATE_LIMIT_ANONYMOUS", default_value = "300/1m")]
    pub rate_limit_anonymous: Rate,
    /// Requests per user (the token's subject).
    #[arg(long, env = "RATE_LIMIT_USER", default_value = "3000/1m")]
    pub rate_limit_user: Rate,
    /// A route's own limit, per client address, e.g. `POST /api/v1/auth/login=5/10m`; repeat
    /// the flag, or separate with `;` in the variable. The auth routes have built-in limits
    /// (register 20/10m, login 30/10m, otp/request 10/10m, otp/verify 30/10m, password/forgot
    /// 10/10m, password/reset 20/10m, an OpenID sign-in's start and callback 60/10m each);
    /// one given here for the same route replaces its own.
    #[arg(
        long = "rate-limit-route",
        env = "RATE_LIMIT_ROUTES",
        value_delimiter = ';'
    )]
    pub rate_limit_routes: Vec<RouteRate>,
    /// Reverse proxies whose X-Forwarded-For is believed, and which the per-address
    /// connection cap exempts: addresses or CIDR ranges (`10.0.0.7,172.16.0.0/12`),
    /// comma-separated.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<crate::net::IpRange>,
    /// Redis for counters shared by every replica (redis://127.0.0.1:6379); unset: counted
    /// in this process.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Origins allowed to call the API from a browser (with credentials), comma-separated;
    /// unset: no cross-origin access.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Deprecated routes: `GET /api/v1/old=2026-12-01,2027-06-01` (deprecated since, sunset
    /// on); answered with Deprecation and Sunset headers. Separate with `;`.
    #[arg(
        long = "deprecated-route",
        env = "DEPRECATED_ROUTES",
        value_delimiter = ';'
    )]
    pub deprecated_routes: Vec<Deprecated>,
    /// Log request and response bodies (JSON only, secrets redacted) at debug level.
    #[arg(long, env = "LOG_BODIES")]
    pub log_bodies: bool,
    /// Count and refuse nothing (when a proxy in front already limits, or to measure what
    /// the limiter costs).
    #[arg(long, env = "RATE_LIMITS_OFF")]
    pub rate_limits_off: bool,
    /// HTTP connections open at once; past it new ones wait in the kernel's accept queue
    /// until one closes (an idle one closes after 10 s), so a flood of clients cannot grow
    /// the process.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = crate::http::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// HTTP connections open at once from one client address (trusted proxies exempt); past
    /// it a new one is closed at once, so one address cannot take every connection.
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", default_value_t = crate::http::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    pub max_connections_per_address: usize,
    /// Seconds a new connection has to send its first request's start (or the HTTP/2
    /// preface) before it is closed.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_SECS", default_value_t = 5)]
    pub handshake_timeout_secs: u64,
    /// Seconds a connection may stay open with no request under way (HTTP/1 kept alive,
    /// HTTP/2) before it is closed.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 30)]
    pub idle_timeout_secs: u64,
    /// Base URLs of the deployment's other service processes (comma-separated), whose parts
    /// `GET /api/v1/me/export` gathers into one document: set it on the process the reverse
    /// proxy sends exports to (auth). `herald up` runs every service and needs none.
    #[arg(long, env = "EXPORT_PEERS", value_delimiter = ',')]
    pub export_peers: Vec<String>,
}

impl Default for EdgeArgs {
    fn default() -> Self {
        Self {
            rate_limit_anonymous: "300/1m".parse().expect("a valid rate"),
            rate_limit_user: "3000/1m".parse().expect("a valid rate"),
            rate_limit_routes: Vec::new(),
            trusted_proxies: Vec::new(),
            redis_url: None,
            cors_origins: Vec::new(),
            deprecated_routes: Vec::new(),
            log_bodies: false,
            rate_limits_off: false,
            max_connections: crate::http::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: crate::http::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            handshake_timeout_secs: 5,
            idle_timeout_secs: 30,
            export_peers: Vec::new(),
        }
    }
}

impl EdgeArgs {
    /// Whether the edge can start with these settings, connecting to nothing (`herald
    /// check`): the CORS origins, and REDIS_URL parsed but not dialled.
    pub fn check(&self) -> Result<(), EdgeSetupError> {
        self.cors_origins()?;
        if let Some(url) = &self.redis_url {
            redis::Client::open(url.as_str()).map_err(EdgeSetupError::RedisUrl)?;
        }
        for peer in &self.export_peers {
            crate::net::check_http_url(peer)
                .map_err(|reason| EdgeSetupError::ExportPeer(peer.clone(), reason))?;
        }
        Ok(())
    }

    fn cors_origins(&self) -> Result<Vec<HeaderValue>, EdgeSetupError> {
        self.cors_origins
            .iter()
            .map(|o| {
                let o = o.trim();
                if o == "*" || !(o.starts_with("https://") || o.starts_with("http://")) {
                    return Err(EdgeSetupError::Origin(o.to_string()));
                }
                HeaderValue::from_str(o).map_err(|_| EdgeSetupError::Origin(o.to_string()))
            })
            .collect()
    }

    /// How the service's listener is served.
    pub fn serve_options(&self) -> crate::http::ServeOptions {
        crate::http::ServeOptions {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            unlimited: self.trusted_proxies.clone(),
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            ..crate::http::ServeOptions::default()
        }
    }
}

/// Limits per client address on the routes that guess or spend something (passwords, codes,
/// accounts, messages sent), on unless configured otherwise: counted per address whatever
/// token comes with the request, so neither a token nor accounts made for the purpose buy
/// more guesses. The auth service limits the same routes per target account as well.
pub const DEFAULT_ROUTE_LIMITS: &[&str] = &[
    "POST /api/v1/auth/register=20/10m",
    "POST /api/v1/auth/login=30/10m",
    "POST /api/v1/auth/otp/request=10/10m",
    "POST /api/v1/auth/otp/verify=30/10m",
    "POST /api/v1/auth/password/forgot=10/10m",
    "POST /api/v1/auth/password/reset=20/10m",
    // Each start keeps a sign-in in the database for 10 minutes.
    "GET /api/v1/auth/oidc/{provider}/start=60/10m",
    "GET /api/v1/auth/oidc/{provider}/callback=60/10m",
];

/// The configured route limits, then each built-in one whose route none of them names.
pub fn route_rates(configured: &[RouteRate]) -> Vec<RouteRate> {
    let mut rates = configured.to_vec();
    for default in DEFAULT_ROUTE_LIMITS {
        let default: RouteRate = default.parse().expect("the built-in route limits parse");
        if !rates
            .iter()
            .any(|r| r.method == default.method && r.path == default.path)
        {
            rates.push(default);
        }
    }
    rates
}

/// A deprecated route and its dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecated {
    pub method: String,
    pub path: String,
    /// `Deprecation: @<unix seconds>` (RFC 9745).
    pub deprecation: String,
    /// `Sunset: <HTTP date>` (RFC 8594).
    pub sunset: String,
}

impl std::str::FromStr for Deprecated {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not like `GET /api/v1/old=2026-12-01,2027-06-01` (deprecated since, sunset on)"
            )
        };
        let (route, dates) = text.rsplit_once('=').ok_or_else(bad)?;
        let (method, path) = route.trim().split_once(' ').ok_or_else(bad)?;
        let (since, sunset) = dates.split_once(',').ok_or_else(bad)?;
        let date = |d: &str| {
            events::json::parse_date(d.trim())
                .and_then(|days| jiff::Timestamp::from_second(i64::from(days) * 86_400).ok())
                .ok_or_else(bad)
        };
        let (since, sunset) = (date(since)?, date(sunset)?);
        Ok(Self {
            method: method.trim().to_ascii_uppercase(),
            path: path.trim().to_string(),
            deprecation: format!("@{}", since.as_second()),
            // The IMF-fixdate of RFC 9110: `Tue, 01 Jun 2027 00:00:00 GMT`.
            sunset: jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&sunset)
                .map_err(|_| bad())?,
        })
    }
}

enum Counters {
    Local(LocalCounters),
    Redis(RedisCounters),
}

/// Who a request comes from, for limits and logs; handlers may read it from the request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The subject of a valid token.
    pub user: Option<String>,
    /// The client's address (see [`rate::client_ip`]).
    pub ip: IpAddr,
}

/// The edge's state.
pub struct Edge {
    args: EdgeArgs,
    counters: Counters,
    auth: Option<Arc<Authenticator>>,
    anonymous: Limit,
    user: Limit,
    /// The routes with limits of their own: those configured, and the built-in ones
    /// ([`DEFAULT_ROUTE_LIMITS`]) not configured otherwise.
    routes: Vec<(Limit, RouteRate)>,
}

/// A configured rate with the two RateLimit headers that never change for it, written once
/// rather than on every response.
struct Limit {
    rate: Rate,
    limit: HeaderValue,
    policy: HeaderValue,
}

impl Limit {
    fn new(rate: Rate) -> Self {
        let policy = format!("{};w={}", rate.count, rate.window.as_secs());
        Self {
            rate,
            limit: HeaderValue::from(rate.count),
            policy: HeaderValue::from_str(&policy).expect("digits and ;w= are a valid header"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeSetupError {
    #[error("cannot reach Redis for rate-limit counters: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("REDIS_URL does not parse: {0}")]
    RedisUrl(redis::RedisError),
    #[error("CORS origin {0:?} is not a valid origin (like https://app.example.com)")]
    Origin(String),
    #[error("EXPORT_PEERS names {0:?}: {1}")]
    ExportPeer(String, String),
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Edge {
    /// The verifier of the process's tokens, when it has one.
    pub fn authenticator(&self) -> Option<Arc<Authenticator>> {
        self.auth.clone()
    }

    /// The other processes whose parts this one's export gathers (EXPORT_PEERS).
    pub fn export_peers(&self) -> &[String] {
        &self.args.export_peers
    }

    /// `auth` tells users apart for per-user limits and logs; without it every caller is
    /// anonymous.
    pub async fn new(
        args: &EdgeArgs,
        auth: Option<Arc<Authenticator>>,
    ) -> Result<Self, EdgeSetupError> {
        let counters = match &args.redis_url {
            Some(url) => Counters::Redis(RedisCounters::connect(url).await?),
            None => Counters::Local(LocalCounters::default()),
        };
        Ok(Self {
            args: args.clone(),
            counters,
            auth,
            anonymous: Limit::new(args.rate_limit_anonymous),
            user: Limit::new(args.rate_limit_user),
            routes: route_rates(&args.rate_limit_routes)
                .into_iter()
                .map(|r| (Limit::new(r.rate), r))
                .collect(),
        })
    }

    /// `router` behind the edge.
    pub fn wrap(self: Arc<Self>, router: Router) -> Result<Router, EdgeSetupError> {
        let cors = self.cors()?;
        let router = router.layer(axum::middleware::from_fn_with_state(self, edge));
        Ok(match cors {
            Some(cors) => router.layer(cors),
            None => router,
        })
    }

    fn cors(&self) -> Result<Option<tower_http::cors::CorsLayer>, EdgeSetupError> {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        if self.args.cors_origins.is_empty() {
            return Ok(None);
        }
        let origins = self.args.cors_origins()?;
        Ok(Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_credentials(true)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("idempotency-key"),
                    HeaderName::from_static("traceparent"),
                ])
                .expose_headers([
                    header::RETRY_AFTER,
                    HeaderName::from_static("ratelimit-limit"),
                    HeaderName::from_static("ratelimit-remaining"),
                    HeaderName::from_static("ratelimit-reset"),
                    REQUEST_ID,
                    HeaderName::from_static("traceresponse"),
                ])
                .max_age(Duration::from_secs(600)),
        ))
    }

    fn caller(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Caller {
        let user = match &self.auth {
            Some(auth) if headers.contains_key(header::AUTHORIZATION) => {
                auth.authenticate(headers).ok().map(|p| p.subject)
            }
            _ => None,
        };
        let peer = peer.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        // Every X-Forwarded-For line, in order: a proxy may add its own line.
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
        let ip = rate::client_ip(peer, forwarded.as_deref(), &self.args.trusted_proxies);
        Caller { user, ip }
    }

    /// The limit that applies, and the counter's key. A route's own limit counts per client
    /// address even for signed-in callers, so accounts an attacker made for themself do not
    /// multiply, say, the login route's budget.
    fn limit_for(&self, method: &Method, route: &str, caller: &Caller) -> (&Limit, String) {
        if let Some((limit, own)) = self
            .routes
            .iter()
            .find(|(_, r)| r.path == route && r.method == method.as_str())
        {
            let key = format!(
                "herald:rl:{}:{}:ip:{}",
                own.path,
                own.rate.window.as_secs(),
                caller.ip
            );
            return (limit, key);
        }
        match &caller.user {
            Some(user) => {
                let window = self.user.rate.window.as_secs();
                (&self.user, format!("herald:rl:user:{window}:u:{user}"))
            }
            None => {
                let window = self.anonymous.rate.window.as_secs();
                (
                    &self.anonymous,
                    format!("herald:rl:ip:{window}:ip:{}", caller.ip),
                )
            }
        }
    }

    async fn count(&self, key: &str, window: Duration) -> Option<Count> {
        match &self.counters {
            Counters::Local(local) => Some(local.hit(key, window, Instant::now())),
            Counters::Redis(redis) => match redis.hit(key, window).await {
                Ok(count) => Some(count),
                Err(err) => {
                    // Availability first: a Redis outage lets requests through, loudly.
                    tracing::warn!(%err, "rate-limit counter unavailable; request allowed");
                    metrics::counter!("herald_rate_limit_unavailable_total").increment(1);
                    None
                }
            },
        }
    }
}

/// Starts the request's span: a request id (the caller's `x-request-id` when usable) and a
/// trace context (a child of the caller's `traceparent`, or a new trace), both on every log
/// line written while the request is handled and in the response headers.
async fn edge(State(edge): State<Arc<Edge>>, mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<unrouted>".to_string(), |p| p.as_str().to_string());
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %request.method(),
        http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    let trace = TraceContext::continue_in(&span, TraceContext::caller(request.headers()));
    span.record("trace_id", trace.trace_id_hex());
    request.extensions_mut().insert(trace);
    let mut response = handle(edge, request, next, &request_id, route)
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    if let Ok(value) = HeaderValue::from_str(&trace.traceparent()) {
        response.headers_mut().insert("traceresponse", value);
    }
    response
}

async fn handle(
    edge: Arc<Edge>,
    mut request: Request,
    next: Next,
    request_id: &str,
    route: String,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let caller = edge.caller(request.headers(), peer);
    request.extensions_mut().insert(caller.clone());
    let (verdict, limit) = edge.rate(&method, &route, &caller).await;
    let log_bodies = edge.args.log_bodies && tracing::enabled!(tracing::Level::DEBUG);
    let mut request_body = String::new();
    let mut response = match verdict {
        Some(v) if !v.allowed => too_many(v),
        _ => {
            if log_bodies {
                let (read, body) = loggable_request(request).await;
                (request, request_body) = (read, body);
            }
            next.run(request).await
        }
    };
    let headers = response.headers_mut();
    if let (Some(v), Some(limit)) = (verdict, limit) {
        headers.insert("ratelimit-limit", limit.limit.clone());
        headers.insert("ratelimit-remaining", HeaderValue::from(v.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(v.reset_secs));
        headers.insert("ratelimit-policy", limit.policy.clone());
    }
    edge.mark_deprecated(headers, &method, &route);
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    let latency_ms = elapsed * 1000.0;
    crate::metrics::http_request(method.as_str(), &route, status, elapsed);
    if status >= 500 {
        crate::alerts::raise(crate::alerts::Alert::ServerError {
            method: method.to_string(),
            route: route.clone(),
            status,
            request_id: request_id.to_string(),
        });
    }
    let user = caller.user.as_deref().unwrap_or_default();
    let client = caller.ip.to_string();
    if log_bodies {
        let (read, shown) = loggable_response(response).await;
        response = read;
        tracing::debug!(
            %method, route, status, latency_ms, request_id, user, client,
            request_body, response_body = shown, "request"
        );
    } else {
        tracing::info!(%method, route, status, latency_ms, request_id, user, client, "request");
    }
    response
}

impl Edge {
    /// The caller's count against the limit that applies, and that limit (none when the
    /// limits are off, or the counter store is out of reach for the verdict).
    async fn rate(
        &self,
        method: &Method,
        route: &str,
        caller: &Caller,
    ) -> (Option<rate::Verdict>, Option<&Limit>) {
        if self.args.rate_limits_off {
            return (None, None);
        }
        let (limit, key) = self.limit_for(method, route, caller);
        let count = self.count(&key, limit.rate.window).await;
        (
            count.map(|count| rate::verdict(limit.rate, count)),
            Some(limit),
        )
    }

    /// `Deprecation` and `Sunset` on the answers of a route being retired.
    fn mark_deprecated(&self, headers: &mut axum::http::HeaderMap, method: &Method, route: &str) {
        let Some(d) = self
            .args
            .deprecated_routes
            .iter()
            .find(|d| d.path == route && d.method == method.as_str())
        else {
            return;
        };
        if let Ok(value) = HeaderValue::from_str(&d.deprecation) {
            headers.insert("deprecation", value);
        }
        if let Ok(value) = HeaderValue::from_str(&d.sunset) {
            headers.insert("sunset", value);
        }
    }
}

/// The answer over the limit: 429 with when to try again.
fn too_many(v: rate::Verdict) -> Response {
    Problem::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!(
            "at most {} requests per {} s; try again in {} s",
            v.limit, v.window_secs, v.reset_secs
        ),
    )
    .with_retry_after(v.reset_secs)
    .into_response()
}

/// A small JSON request read for the debug log, redacted, and put back for the handler;
/// any other passes through unread.
async fn loggable_request(request: Request) -> (Request, String) {
    let headers = request.headers();
    let small_json = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|len| len <= 1 << 20)
        && headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !small_json {
        return (request, String::new());
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let shown = redact::loggable_body(&bytes);
    (Request::from_parts(parts, Body::from(bytes)), shown)
}

/// A small JSON answer read for the debug log, redacted, and put back; streams (server-sent
/// events) and others pass through unread.
async fn loggable_response(response: Response) -> (Response, String) {
    let (parts, body) = response.into_parts();
    let small = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|len| len <= 4 << 20);
    let json = small
        && parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| {
            v.as_bytes().starts_with(b"application/json")
                || v.as_bytes().starts_with(b"application/problem+json")
        });
    if !json {
        return (Response::from_parts(parts, body), String::new());
    }
    let bytes = axum::body::to_bytes(body, 4 << 20)
        .await
        .unwrap_or_default();
    let shown = redact::loggable_body(&bytes);
    (Response::from_parts(parts, Body::from(bytes)), shown)
}
