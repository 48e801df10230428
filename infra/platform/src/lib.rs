//! Everything in Herald that is neither the event contract nor business logic.
//!
//! This is the only crate that names rdkafka: producers and consumers see [`kafka::Publisher`],
//! [`kafka::TopicReader`] and plain data. It also owns the local Apache Kafka broker used by
//! `herald up` and the tests ([`broker`]), HTTP serving with timeouts and graceful shutdown
//! ([`http`]), process shutdown ([`shutdown`]), logs and traces ([`telemetry`], [`trace`]),
//! error alerts ([`alerts`]), database pools
//! chosen by URL ([`db`]) and the schema registry client ([`registry`]).

/// jemalloc serves every allocation of every process built on this crate (`herald`, and the
/// benchmarks and tests, so what they measure is what runs), librdkafka's C code included:
/// glibc's allocator spent a fifth of the ingress's CPU consolidating small chunks freed on
/// another thread than the one that took them (each event's buffers are taken on a request's
/// thread and freed on librdkafka's). Its settings: `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod alerts;
pub mod auth;
pub mod backup;
pub mod broker;
pub mod clock;
pub mod consumer;
pub mod contract;
pub mod db;
pub mod edge;
pub mod export;
pub mod http;
pub mod jobs;
pub mod kafka;
pub mod metrics;
pub mod net;
pub mod openapi;
pub mod privacy;
pub mod problem;
pub mod registry;
pub mod seal;
pub mod search_node;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod topics;
pub mod trace;
