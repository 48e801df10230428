//! With a schema registry configured, events use the Confluent wire format. Confluent's
//! registry cannot run here, so a stand-in speaks the part of its REST API Herald uses and
//! checks the exact requests: content type, subject names, and schemas that parse.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use events::{Catalog, Codec, WireFormat};
use ingress::idempotency::MemoryStore;
use support::{TestIngress, ingress_args, kafka, order, token};

#[tokio::test]
async fn with_a_registry_events_carry_the_registered_schema_id() {
    let (url, registry) = support::registry::start().await;

    let kafka = kafka(&support::brokers().await);
    let args = ingress_args(&["--schema-registry-url", &url]);
    let ingress = TestIngress::start(kafka.clone(), args, Arc::new(MemoryStore::default())).await;
    let response = ingress
        .post(&token("alice", &["user"]), &order("o-1"))
        .await;
    assert_eq!(response.status(), 202);

    let ids: HashMap<(String, String), u32> = registry.ids.lock().unwrap().clone();
    let catalog = Arc::new(Catalog::embedded().unwrap());
    assert_eq!(
        ids.len(),
        catalog.all_versions().count(),
        "one subject per schema version"
    );
    let subject = format!(
        "{}orders-herald.events.OrderPlacedEvent",
        kafka.topic_prefix
    );
    let id = ids
        .iter()
        .find(|((s, _), _)| *s == subject)
        .map(|(_, id)| *id)
        .expect("order.placed registered");

    let records = platform::kafka::read_to_end(
        &kafka,
        &[kafka.topic("orders")],
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(records.len(), 1);
    let payload = records[0].payload.clone().unwrap();
    assert_eq!(payload[0], 0, "Confluent magic byte");
    assert_eq!(u32::from_be_bytes(payload[1..5].try_into().unwrap()), id);

    // A reader that knows the registry's ids decodes it.
    let by_fingerprint = catalog
        .all_versions()
        .map(|v| {
            let subject = format!(
                "{}{}-herald.events.{}",
                kafka.topic_prefix,
                v.topic,
                v.wire_json["name"].as_str().unwrap()
            );
            (v.fingerprint, ids[&(subject, v.wire.canonical_form())])
        })
        .collect();
    let codec = Codec::new(
        catalog,
        WireFormat::Confluent {
            ids: by_fingerprint,
        },
    );
    let decoded = codec.decode(&payload).unwrap();
    assert_eq!(decoded.data, order("o-1")["data"]);
    ingress.stop().await;
}
