//! Everything in Herald that is neither the event contract nor business logic.
//!
//! This is the only crate that names rdkafka: producers and consumers see [`kafka::Publisher`],
//! [`kafka::TopicReader`] and plain data. It also owns the local Apache Kafka broker used by
//! `herald up` and the tests ([`broker`]), HTTP serving with timeouts and graceful shutdown
//! ([`http`]), process shutdown ([`shutdown`]), logs and traces ([`telemetry`], [`trace`]),
//! error alerts ([`alerts`]), database pools
//! chosen by URL ([`db`]) and the schema registry client ([`registry`]).

pub mod alerts;
pub mod auth;
pub mod broker;
pub mod consumer;
pub mod contract;
pub mod db;
pub mod edge;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod problem;
pub mod registry;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
