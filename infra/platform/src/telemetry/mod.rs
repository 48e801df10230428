//! Logging and tracing.
//!
//! Logs: `RUST_LOG` filters (default `info`). Lines go to stderr, readable on a terminal and
//! JSON otherwise (one object per line, for a log collector, see [`json`]), or as
//! `LOG_FORMAT` (`json` or `text`) says. A line written while a request is handled carries the
//! request's span: its request id and trace id. Lines are buffered and written by a thread of
//! their own, WARN and ERROR at once ([`sink`]).
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every span at level info or above (the
//! request, the Kafka produce, each consumer's batch, the SMTP/HTTP/SQL calls inside it) is
//! exported over OTLP/HTTP to that collector, whatever `RUST_LOG` says, in batches from a
//! thread of its own (`OTEL_BSP_*` tune them). The encoding is protobuf, or JSON when
//! `OTEL_EXPORTER_OTLP_PROTOCOL` is `http/json`; `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` sample (default: every trace). The service is named by
//! `OTEL_SERVICE_NAME`, or after the subcommand. Without the variable nothing is exported and
//! spans cost what `tracing` spans cost.
//!
//! Errors: when `SENTRY_DSN` is set, ERROR events and panics go to Sentry as well ([`errors`]).

pub mod errors;
pub mod json;
pub mod sink;

use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

static EXPORTER: OnceLock<SdkTracerProvider> = OnceLock::new();
static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static LOGS: OnceLock<sink::Sink> = OnceLock::new();

/// Installs the global subscriber once; later calls (tests) are no-ops. `service` names the
/// process in traces unless `OTEL_SERVICE_NAME` does.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let output = LOGS.get_or_init(|| {
        let output = sink::Sink::start(json);
        // What was buffered goes out before the panic's message.
        let previous = std::panic::take_hook();
        let flushing = output.clone();
        std::panic::set_hook(Box::new(move |info| {
            flushing.flush();
            previous(info);
        }));
        output
    });
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .with_writer(output.clone())
            .fmt_fields(json::SpanFields)
            .event_format(json::JsonLine)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(output.clone())
            .boxed()
    };
    let traces = match exporter(service) {
        Ok(Some(provider)) => {
            let tracer = provider.tracer("herald");
            let _ = TRACER.set(tracer.clone());
            let _ = EXPORTER.set(provider);
            // Libraries' own spans (hyper, the exporter's HTTP client) stay out: below info.
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    // What a trace UI does not need, and each costs time on every span (or
                    // on every poll of a traced future): the source location, the thread,
                    // busy and idle time, and making each span the current OpenTelemetry
                    // context (nothing here reads it: parents come from the span tree).
                    .with_location(false)
                    .with_threads(false)
                    .with_tracked_inactivity(false)
                    .with_context_activation(false)
                    .with_filter(LevelFilter::INFO),
            )
        }
        Ok(None) => None,
        Err(err) => {
            eprintln!("traces are not exported: {err}");
            None
        }
    };
    let errors = match errors::layers(service) {
        Ok(layers) => layers,
        Err(err) => {
            eprintln!("errors are not reported to Sentry: {err:#}");
            None
        }
    };
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .with(errors)
        .try_init();
}

/// Whether spans are exported: only then do they have OpenTelemetry ids.
pub(crate) fn exporting() -> bool {
    EXPORTER.get().is_some()
}

/// The tracer, for the few spans made straight in the SDK, when spans are exported.
pub(crate) fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Writes the log lines and sends the spans still buffered; call once, before the process
/// exits.
pub fn shutdown() {
    if let Some(logs) = LOGS.get() {
        logs.flush();
    }
    errors::flush(std::time::Duration::from_secs(2));
    if let Some(provider) = EXPORTER.get()
        && let Err(err) = provider.shutdown()
    {
        eprintln!("flushing traces: {err}");
    }
}

fn exporter(service: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let configured = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !configured("OTEL_EXPORTER_OTLP_ENDPOINT")
        && !configured("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    {
        return Ok(None);
    }
    // The endpoint, headers and timeout come from the standard OTEL_EXPORTER_OTLP_* variables;
    // protobuf unless JSON is asked for (it is larger and slower to encode).
    let json = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok())
    .is_some_and(|protocol| protocol.trim() == "http/json");
    let protocol = if json {
        opentelemetry_otlp::Protocol::HttpJson
    } else {
        opentelemetry_otlp::Protocol::HttpBinary
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()?;
    let mut resource = Resource::builder();
    if !configured("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service.to_string());
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}
