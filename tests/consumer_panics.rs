//! The consumer runtime never loses a partition to a panicking handler: the panic is caught,
//! counted and retried, then the event goes to the dead-letter topic, and the partition goes
//! on with the events after it. On a real broker.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use platform::consumer::{ConsumerArgs, Event, Handler, HandlerError, Runner, dlq_headers};
use support::{TestIngress, token};

/// The first item's SKU: what tells the events of one order apart here.
fn sku(event: &Event) -> &str {
    event.data["items"][0]["sku"].as_str().unwrap_or_default()
}

/// Records the SKUs it handles; panics on one of them, every time.
struct PanicsOn {
    order: &'static str,
    handled: Mutex<Vec<String>>,
}

#[async_trait]
impl Handler for PanicsOn {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        for event in events {
            assert_ne!(sku(event), self.order, "the handler's bug");
        }
        let mut handled = self.handled.lock().unwrap();
        handled.extend(events.iter().map(|e| sku(e).to_string()));
        Ok(())
    }
}

#[tokio::test]
async fn a_handler_that_panics_on_one_event_dead_letters_it_and_the_partition_goes_on() {
    let app = TestIngress::start_default().await;
    let kafka = app.kafka.clone();
    let writer = token("svc", &["service"]);
    // One order, so one key and one partition: two events before the bad one, two after.
    for sku in ["s-1", "s-2", "panic", "s-3", "s-4"] {
        let mut event = support::order("o-panics");
        event["data"]["items"][0]["sku"] = sku.into();
        let answer = app.post(&writer, &event).await;
        assert_eq!(answer.status(), 202, "{sku}");
    }
    let contract = platform::contract::ContractArgs::default();
    let catalog = Arc::new(contract.catalog().unwrap());
    let codec = Arc::new(contract.codec(catalog, &kafka).await.unwrap());
    let handler = Arc::new(PanicsOn {
        order: "panic",
        handled: Mutex::new(Vec::new()),
    });
    let consumer = ConsumerArgs {
        max_backoff_ms: 50,
        ..ConsumerArgs::default()
    };
    let runner = Runner::new(
        "panics",
        vec![kafka.topic("orders")],
        &kafka,
        &consumer,
        codec,
        handler.clone(),
    );
    let dlq = runner.dead_letter_topic();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(runner.run(shutdown.clone()));

    support::eventually(Duration::from_secs(60), "4 events handled", || async {
        let handled = handler.handled.lock().unwrap().clone();
        if handled.len() >= 4 {
            Ok(())
        } else {
            Err(format!("{handled:?}"))
        }
    })
    .await;
    assert_eq!(
        *handler.handled.lock().unwrap(),
        ["s-1", "s-2", "s-3", "s-4"],
        "every other event, in order"
    );
    let letters = platform::kafka::read_to_end(&kafka, &[dlq], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "one dead letter");
    let header = |name: &str| String::from_utf8(letters[0].header(name).unwrap().to_vec()).unwrap();
    assert!(
        header(dlq_headers::ERROR).contains("panicked")
            && header(dlq_headers::ERROR).contains("the handler's bug"),
        "{}",
        header(dlq_headers::ERROR)
    );
    assert_eq!(header(dlq_headers::ATTEMPTS), "3");
    assert!(
        platform::consumer::health::lost_partitions().is_empty(),
        "no partition lost"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    app.stop().await;
}
