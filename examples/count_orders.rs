//! A consumer of its own, in one file: it counts each customer's orders from the orders
//! topic and serves the counts over HTTP. docs/guides/add-a-consumer.md walks through it;
//! `cargo test` compiles it, so the guide cannot drift from the code.
//!
//! Run it beside `herald up` (it reads the same broker and token secret):
//!
//! ```text
//! KAFKA_BROKERS=127.0.0.1:9092 JWT_HS256_SECRET=$(cat data/dev-jwt-secret) \
//!   cargo run --example count_orders
//! curl -H "authorization: Bearer $(herald token --sub ops --role admin)" \
//!   localhost:8090/api/v1/order-counts
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use platform::auth::{AuthArgs, Authenticator};
use platform::consumer::{ConsumerArgs, Event, Handler, HandlerError, OrReject, Runner};
use platform::contract::ContractArgs;
use platform::edge::{Edge, EdgeArgs};
use platform::kafka::KafkaArgs;
use platform::problem::Problem;
use platform::service::{Service, Serving, Work};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// 1. The effect. The runtime delivers each event at least once, so the handler counts an
///    `event_id` once. A real consumer keeps both in a database, in one transaction: the
///    runtime stores offsets only after `handle` returned `Ok`.
#[derive(Default)]
struct OrderCounter {
    counts: Mutex<BTreeMap<String, u64>>,
    seen: Mutex<HashSet<Uuid>>,
}

#[async_trait]
impl Handler for OrderCounter {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        for event in events {
            if event.envelope.event_type != "order.placed" {
                continue;
            }
            // An order the schema let through always has a customer: if not, the event can
            // never be applied, and `or_reject` sends it to the dead-letter topic.
            let customer = event.data["customer_id"]
                .as_str()
                .ok_or("an order without a customer_id")
                .or_reject()?;
            if self.seen.lock().unwrap().insert(event.envelope.event_id) {
                *self
                    .counts
                    .lock()
                    .unwrap()
                    .entry(customer.to_string())
                    .or_default() += 1;
            }
        }
        Ok(())
    }
}

/// 2. The service: its routes, and its work until shutdown.
struct OrderCounts {
    counter: Arc<OrderCounter>,
    runner: Runner,
    auth: Arc<Authenticator>,
}

impl Service for OrderCounts {
    fn name(&self) -> &'static str {
        "order-counts"
    }

    fn routes(&self) -> Router {
        Router::new()
            .route("/api/v1/order-counts", get(counts))
            .with_state((self.counter.clone(), self.auth.clone()))
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> Work {
        Box::pin(async move { Ok(self.runner.run(shutdown).await?) })
    }
}

/// `GET /api/v1/order-counts`, for admins.
async fn counts(
    State((counter, auth)): State<(Arc<OrderCounter>, Arc<Authenticator>)>,
    headers: HeaderMap,
) -> Result<Json<BTreeMap<String, u64>>, Problem> {
    let caller = auth.authenticate(&headers)?;
    if !caller.roles.iter().any(|role| role == "admin") {
        return Err(Problem::forbidden("order counts need the admin role"));
    }
    Ok(Json(counter.counts.lock().unwrap().clone()))
}

/// 3. Its settings: its own, and the shared ones every service flattens in.
#[derive(Parser)]
struct Args {
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    contract: ContractArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    edge: EdgeArgs,
}

/// 4. Wiring: build the service, run it the way every Herald service runs.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let catalog = Arc::new(args.contract.catalog()?);
    let codec = Arc::new(args.contract.codec(catalog, &args.kafka).await?);
    let counter = Arc::new(OrderCounter::default());
    let runner = Runner::new(
        "order-counts",
        vec![args.kafka.topic("orders")],
        &args.kafka,
        &args.consumer,
        codec,
        counter.clone(),
    );
    let auth = Arc::new(Authenticator::from_args(&args.auth)?);
    let service = OrderCounts {
        counter,
        runner,
        auth: auth.clone(),
    };
    let serving = Serving {
        listener: platform::http::bind(args.listen)?,
        edge: Arc::new(Edge::new(&args.edge, Some(auth)).await?),
        options: args.edge.serve_options(),
        shutdown: platform::shutdown::on_signal(),
    };
    println!("order-counts: HTTP API on http://{}", serving.local_addr()?);
    platform::service::run(serving, vec![Box::new(service)]).await
}
