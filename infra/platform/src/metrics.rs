//! Metrics in the Prometheus text format: every service records through the `metrics`
//! facade; `GET /metrics` on the service's HTTP port renders them. `HERALD_METRICS=off`
//! installs no recorder: recording costs nothing and `/metrics` is empty (to measure what
//! metrics cost, or where nothing scrapes them).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide recorder (once; later calls return the same handle).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            if std::env::var("HERALD_METRICS").is_ok_and(|v| v.eq_ignore_ascii_case("off")) {
                return None;
            }
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .install_recorder()
                .ok()?;
            // Histograms keep every sample until they are drained into their buckets, which
            // the recorder installed this way leaves to its owner: without this, a process
            // nobody scrapes would grow by every sample and slow down as it grows.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// The current metrics, Prometheus text format.
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

/// A method as a label: the standard ones as they are, any other (a client can send any
/// token as a method) as `_OTHER`, as OpenTelemetry's HTTP conventions do, so invented methods
/// cannot grow the series without bound.
pub fn method_label(method: &str) -> &str {
    match method {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" | "TRACE" | "CONNECT" => {
            method
        }
        _ => "_OTHER",
    }
}

/// One HTTP request answered: `herald_http_requests_total{method, route, status}` and
/// `herald_http_request_duration_seconds{method, route}`. The route is the router's pattern
/// (`/api/v1/users/{id}`), never the path, so a label cannot take unbounded values.
pub fn http_request(method: &str, route: &str, status: u16, seconds: f64) {
    let (method, route) = (method_label(method).to_string(), route.to_string());
    metrics::counter!(
        "herald_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!(
        "herald_http_request_duration_seconds",
        "method" => method,
        "route" => route
    )
    .record(seconds);
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn invented_methods_fold_into_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        for odd in ["FOO", "get", "PROPFIND", "X\u{1}", ""] {
            assert_eq!(method_label(odd), "_OTHER", "{odd:?}");
        }
    }
}
