//! Standard tools read what Herald writes: every event type, posted through the ingress,
//! read back from the topics by two Avro implementations that share no code with Herald,
//! Python's fastavro and Java's Apache Avro (`BinaryMessageDecoder`, from Maven Central), with
//! nothing of Herald but the wire schemas `herald schemas export` writes. Each resolves
//! single-object records by the fingerprints it computes itself from the Avro specification's
//! Parsing Canonical Form, and Confluent-framed records by the ids a schema registry gave;
//! every field, logical types included, must come back as posted.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use events::Catalog;
use ingress::idempotency::MemoryStore;
use serde_json::{Value, json};
use support::process::HERALD;
use support::{TestIngress, ingress_args, token};

/// Posts one event of every type (its example, sealed fields sealed); the data posted, by
/// event id.
async fn post_every_type(app: &TestIngress) -> HashMap<String, (String, Value)> {
    let catalog = Catalog::embedded().unwrap();
    let key =
        platform::seal::SealingKey::from_base64(&secrecy::SecretString::from(support::SEALING_KEY))
            .unwrap();
    let writer = token("outside-reader", &["service", "admin"]);
    let mut posted = HashMap::new();
    for schema in catalog.event_types() {
        let mut data = schema.example.clone();
        key.seal_fields(schema, &mut data);
        let answer = app
            .post(&writer, &json!({"type": schema.event_type, "data": data}))
            .await;
        assert_eq!(answer.status(), 202, "{}", schema.event_type);
        let body: Value = answer.json().await.unwrap();
        posted.insert(
            body["event_id"].as_str().unwrap().to_string(),
            (schema.event_type.clone(), data),
        );
    }
    posted
}

/// The records of every topic, as `read_avro_records.py` takes them.
async fn records_file(app: &TestIngress, path: &std::path::Path) -> usize {
    let records = platform::kafka::read_to_end(&app.kafka, &app.topics(), Duration::from_secs(30))
        .await
        .unwrap();
    let lines: Vec<String> = records
        .iter()
        .map(|r| {
            json!({
                "topic": r.topic,
                "value": base64::engine::general_purpose::STANDARD.encode(r.payload.as_deref().unwrap()),
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    // The same values for the Java reader, one base64 value per line.
    let values: Vec<String> = records
        .iter()
        .map(|r| base64::engine::general_purpose::STANDARD.encode(r.payload.as_deref().unwrap()))
        .collect();
    std::fs::write(path.with_extension("b64"), values.join("\n") + "\n").unwrap();
    records.len()
}

/// Apache Avro's jars, fetched from Maven Central once into the cache folder.
fn avro_jars() -> std::path::PathBuf {
    let libs = platform::broker::cache_dir().join("avro-java-1.12.2");
    if !libs.join("avro-1.12.2.jar").exists() {
        let pom =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/java/pom.xml");
        let fetched = Command::new("mvn")
            .args(["-q", "-f"])
            .arg(&pom)
            .arg("dependency:copy-dependencies")
            .arg(format!("-DoutputDirectory={}", libs.display()))
            .output()
            .expect("mvn runs (infra/scripts/services.sh installs Maven)");
        assert!(
            fetched.status.success(),
            "fetching Apache Avro: {fetched:?}"
        );
    }
    libs
}

/// Java's reading of the records beside `records` (`.b64`), one JSON object per record.
fn java(
    schemas: &std::path::Path,
    records: &std::path::Path,
    ids: Option<&std::path::Path>,
) -> Vec<Value> {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/java/AvroRecords.java");
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(format!("{}/*", avro_jars().display()))
        .arg(source)
        .arg(schemas)
        .arg(records.with_extension("b64"));
    if let Some(ids) = ids {
        let lines: String =
            serde_json::from_str::<HashMap<String, String>>(&std::fs::read_to_string(ids).unwrap())
                .unwrap()
                .iter()
                .map(|(id, file)| format!("{id}={file}\n"))
                .collect();
        let path = ids.with_extension("txt");
        std::fs::write(&path, lines).unwrap();
        command.arg(path);
    }
    let output = command.output().expect("java runs");
    assert!(
        output.status.success(),
        "Java Avro could not read Herald's records: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let (id, event_type, data) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            json!({"event_id": id, "event_type": event_type, "data": serde_json::from_str::<Value>(data).unwrap()})
        })
        .collect()
}

/// fastavro's reading of `records`, one JSON object per record.
fn fastavro(
    schemas: &std::path::Path,
    records: &std::path::Path,
    ids: Option<&std::path::Path>,
) -> Vec<Value> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/read_avro_records.py");
    let mut command = Command::new("python3");
    command.arg(script).arg(schemas).arg(records);
    if let Some(ids) = ids {
        command.arg(ids);
    }
    let output = command
        .output()
        .expect("python3 runs (infra/scripts/services.sh installs fastavro)");
    assert!(
        output.status.success(),
        "fastavro could not read Herald's records: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The app's topics read by fastavro and by Java with `dir`'s exported schemas (and its
/// `ids.json` when `confluent`), each read back as posted; how many records there were.
async fn read_by_both(
    app: &TestIngress,
    dir: &std::path::Path,
    posted: &HashMap<String, (String, Value)>,
    confluent: bool,
) -> usize {
    let records = dir.join("records.jsonl");
    let count = records_file(app, &records).await;
    let ids = confluent.then(|| dir.join("ids.json"));
    assert_read_back(
        &fastavro(&dir.join("schemas"), &records, ids.as_deref()),
        posted,
    );
    assert_read_back(
        &java(&dir.join("schemas"), &records, ids.as_deref()),
        posted,
    );
    count
}

/// `herald schemas export DIR`.
fn export(dir: &std::path::Path) {
    let output = Command::new(HERALD)
        .args(["schemas", "export"])
        .arg(dir)
        .env_remove("SCHEMAS_DIR")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

/// Every record read is one posted, with the same type and data.
fn assert_read_back(read: &[Value], posted: &HashMap<String, (String, Value)>) {
    assert_eq!(read.len(), posted.len(), "one record per event posted");
    for record in read {
        let id = record["event_id"].as_str().unwrap();
        let (event_type, data) = &posted[id];
        assert_eq!(record["event_type"], json!(event_type));
        // A field left out when posting is read back as its default, null.
        let mut expected = data.clone();
        for (field, value) in record["data"].as_object().unwrap() {
            if value.is_null() {
                expected
                    .as_object_mut()
                    .unwrap()
                    .entry(field.clone())
                    .or_insert(Value::Null);
            }
        }
        assert_eq!(record["data"], expected, "{event_type}");
    }
}

#[tokio::test]
async fn fastavro_and_java_read_every_event_type_in_single_object_encoding() {
    let app = TestIngress::start_default().await;
    let posted = post_every_type(&app).await;
    let dir = support::test_dir(&format!("outside-{}", uuid::Uuid::new_v4().simple()));
    export(&dir.join("schemas"));
    let count = read_by_both(&app, &dir, &posted, false).await;
    eprintln!(
        "outside readers: fastavro and Java Avro each read {count} single-object records of {} \
         event types",
        posted.len()
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn fastavro_and_java_read_every_event_type_in_the_confluent_wire_format() {
    let (url, registry) = support::registry::start().await;
    let kafka = support::kafka(&support::brokers().await);
    let args = ingress_args(&["--schema-registry-url", &url]);
    let app = TestIngress::start(kafka, args, Arc::new(MemoryStore::default())).await;
    let posted = post_every_type(&app).await;
    let dir = support::test_dir(&format!("outside-cf-{}", uuid::Uuid::new_v4().simple()));
    export(&dir.join("schemas"));
    // The registry's ids, as files of the export: what a registry client would fetch.
    let catalog = Catalog::embedded().unwrap();
    let ids: HashMap<String, String> = registry
        .ids
        .lock()
        .unwrap()
        .iter()
        .map(|((_, canonical), id)| {
            let version = catalog
                .all_versions()
                .find(|v| v.wire.canonical_form() == *canonical)
                .expect("a registered schema is one of the catalog's");
            (
                id.to_string(),
                format!("{}.v{}.avsc", version.event_type, version.version),
            )
        })
        .collect();
    std::fs::write(dir.join("ids.json"), serde_json::to_string(&ids).unwrap()).unwrap();
    let count = read_by_both(&app, &dir, &posted, true).await;
    eprintln!(
        "outside readers: fastavro and Java Avro each read {count} Confluent-framed records of \
         {} event types",
        posted.len()
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_wire_schemas_are_served_by_fingerprint_as_they_are_exported() {
    let app = TestIngress::start_default().await;
    let client = support::client();
    let listed: Value = client
        .get(app.url("/api/v1/schemas"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let catalog = Catalog::embedded().unwrap();
    let listed = listed["schemas"].as_array().unwrap();
    assert_eq!(listed.len(), catalog.all_versions().count());
    let dir = support::test_dir(&format!("schemas-{}", uuid::Uuid::new_v4().simple()));
    export(&dir);
    for item in listed {
        let fingerprint = item["fingerprint"].as_str().unwrap();
        let one: Value = client
            .get(app.url(&format!("/api/v1/schemas/{fingerprint}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let file = dir.join(format!(
            "{}.v{}.avsc",
            item["event_type"].as_str().unwrap(),
            item["version"]
        ));
        let exported: Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(one["schema"], exported);
        // Records written before carry the legacy fingerprint: it finds the same schema.
        if let Some(legacy) = item["legacy_fingerprint"].as_str() {
            let old: Value = client
                .get(app.url(&format!("/api/v1/schemas/{legacy}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(old["fingerprint"], json!(fingerprint));
        }
    }
    for (bad, status) in [
        ("nothex!!nothex!!", 400),
        ("0000000000000000", 404),
        ("abc", 400),
        // A sign, which `from_str_radix` alone would take.
        ("+f+f+f+f+f+f+f+f", 400),
        ("%E2%80%AEffffffffffffff", 400),
    ] {
        let answer = client
            .get(app.url(&format!("/api/v1/schemas/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "{bad}");
        assert_eq!(answer.headers()["content-type"], "application/problem+json");
    }
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
