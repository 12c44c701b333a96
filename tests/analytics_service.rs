//! The Analytics Service seed as a pipeline (examples/analytics-service), end to end: a real
//! broker (tansu), S3 and DynamoDB served by moto on loopback, read back with boto3, and the
//! aggregate sink's `/health` and `/metrics`. Redelivered duplicates, an S3 outage under load
//! and a SIGKILL of `weir` mid-stream lose nothing and duplicate nothing.

#[path = "common/aws.rs"]
mod aws;
#[path = "common/broker.rs"]
mod broker;
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws::{Gate, Moto};
use broker::{committed, produce, Broker};
use common::*;

const TOPIC: &str = "product-events";
const GROUP: &str = "analytics-group";
const TYPES: [&str; 4] = ["ProductCreated", "ProductUpdated", "ProductDeleted", "LowStockWarning"];

/// Event `i`: its type, hour (10, 11 or 12 on 2024-01-15) and product follow from `i`.
fn event(i: usize) -> serde_json::Value {
    let kind = TYPES[(i * 7 + i / 3) % 4];
    serde_json::json!({
        "eventId": format!("evt-{i:05}"),
        "eventType": kind,
        "timestamp": format!("2024-01-15T{:02}:{:02}:{:02}.000Z", 10 + i % 3, (i / 3) % 60, i % 60),
        "productId": format!("prod-{}", i % 40),
        "data": {"name": format!("Product {i}"), "stock": i % 17, "price": (i % 90) as f64 + 0.5},
    })
}

fn produce_range(broker: &Broker, range: std::ops::Range<usize>) {
    let events: Vec<String> = range.map(|i| event(i).to_string()).collect();
    let messages: Vec<(Option<&str>, &str)> = events.iter().map(|e| (None, e.as_str())).collect();
    for chunk in messages.chunks(500) {
        produce(broker, TOPIC, chunk);
    }
}

/// The broker, moto (S3 behind a gate the test can close; DynamoDB direct), the bucket and
/// the table, and the environment that points the example at them.
struct World {
    broker: Broker,
    moto: Moto,
    gate: Gate,
    health: String,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        // SQLite storage: under a loaded machine the memory storage was seen reporting a high
        // watermark below offsets the group had already committed, stalling the restarted
        // consumer (offset out of range) for reasons of the broker's own.
        let broker = Broker::persistent();
        broker.create_topic(TOPIC, 2);
        let moto = Moto::start();
        moto.client(&["create-bucket", "event-archive"]);
        moto.client(&["create-table", "RecentEvents", "id"]);
        let gate = Gate::new(&moto.endpoint);
        World { broker, moto, gate, health: free_port().to_string(), dir: tempfile::tempdir().unwrap() }
    }

    fn start(&self) -> Weir {
        let snapshot = self.dir.path().join("aggregates.json").display().to_string();
        let dead = self.dir.path().join("dead-letters.jsonl").display().to_string();
        let minio = self.gate.endpoint();
        let envs = [
            ("KAFKA_BROKERS", self.broker.addr.as_str()),
            ("DYNAMO_ENDPOINT", self.moto.endpoint.as_str()),
            ("MINIO_ENDPOINT", minio.as_str()),
            ("HEALTH_LISTEN", "127.0.0.1"),
            ("HEALTH_PORT", self.health.as_str()),
            ("AGGREGATE_SNAPSHOT", snapshot.as_str()),
            ("DEAD_LETTER_FILE", dead.as_str()),
            // Shorter than the seed's 30 s and 60 s, so a killed member's partitions move sooner.
            ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("KAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
            ("KAFKA_REBALANCE_TIMEOUT_MS", "10000"),
        ];
        Weir::start(&repo().join("examples/analytics-service"), &[], &envs)
    }

    fn health(&self) -> Reply {
        curl("GET", &format!("http://127.0.0.1:{}/health", self.health), None, None)
    }

    /// Offsets the group committed, summed over the partitions (the broker's own high
    /// watermarks are not relied on: the test knows how many it produced).
    fn committed(&self) -> u64 {
        committed(&self.broker, TOPIC, GROUP).0
    }

    /// Waits until the group committed `total` offsets; a stall shows `weir`'s log.
    fn wait_all_committed(&self, weir: &Weir, total: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (done, end) = committed(&self.broker, TOPIC, GROUP);
            if done == total {
                return;
            }
            if Instant::now() >= deadline {
                let log = weir.logs();
                let tail: Vec<&str> = log.lines().rev().take(80).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "timed out after {limit:?}: {done} of {total} offsets committed ({end} in the topic); weir's log ends:\n{}",
                    tail.join("\n")
                );
            }
            // Each look starts a client process: a few a second, not fifty.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The archive as boto3 reads it: object key → body.
    fn archive(&self) -> BTreeMap<String, serde_json::Value> {
        self.moto.objects("event-archive", "events/").into_iter().map(|(k, b)| (k, serde_json::from_str(&b).unwrap())).collect()
    }

    /// The table as boto3 reads it: id → item.
    fn table(&self) -> BTreeMap<String, serde_json::Value> {
        let items = self.moto.scan("RecentEvents");
        let n = items.len();
        let by_id: BTreeMap<String, serde_json::Value> = items.into_iter().map(|i| (i["id"].as_str().unwrap().to_owned(), i)).collect();
        assert_eq!(by_id.len(), n, "one item per id");
        by_id
    }
}

/// The object key the seed lays out for an event: its own hour, then its id.
fn archive_key(e: &serde_json::Value) -> String {
    let t = e["timestamp"].as_str().unwrap();
    format!("events/{}/{}/{}/{}/{}.json", &t[0..4], &t[5..7], &t[8..10], &t[11..13], e["eventId"].as_str().unwrap())
}

fn rfc3339_secs(t: &str) -> i64 {
    humantime::parse_rfc3339(t).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn the_seed_end_to_end_with_redelivered_duplicates() {
    let world = World::new();
    let weir = world.start();
    let n = 1000;
    produce_range(&world.broker, 0..n);
    // The same events again, as a producer retrying after a lost acknowledgement would send them.
    produce_range(&world.broker, 0..100);
    world.wait_all_committed(&weir, 1100, Duration::from_secs(90));

    // Every event is in the table once, with the seed's attributes and a 30-day TTL.
    let table = world.table();
    assert_eq!(table.len(), n);
    for i in [0, 1, 99, 100, 567, n - 1] {
        let e = event(i);
        let item = &table[e["eventId"].as_str().unwrap()];
        assert_eq!(item["eventId"], e["eventId"]);
        assert_eq!(item["eventType"], e["eventType"]);
        assert_eq!(item["timestamp"], e["timestamp"]);
        assert_eq!(item["data"], e, "data is the whole event");
        let created = rfc3339_secs(item["createdAt"].as_str().unwrap());
        assert_eq!(item["ttl"].as_i64().unwrap(), created + 30 * 86_400, "ttl is 30 days after createdAt");
    }
    // Every event is archived once, under its own hour.
    let archive = world.archive();
    assert_eq!(archive.len(), n);
    for i in 0..n {
        let e = event(i);
        assert_eq!(archive.get(&archive_key(&e)), Some(&e), "event {i} at {}", archive_key(&e));
    }
    // The aggregates equal the counts computed here.
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_hour: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        let e = event(i);
        *by_type.entry(e["eventType"].as_str().unwrap().to_owned()).or_default() += 1;
        *by_hour.entry(format!("{}:00:00.000Z", &e["timestamp"].as_str().unwrap()[..13])).or_default() += 1;
    }
    let health = world.health();
    assert_eq!(health.status, 200, "{health:?}");
    let h = health.json();
    assert_eq!(h["status"], "healthy");
    for service in ["kafka", "dynamodb", "s3"] {
        assert_eq!(h["services"][service]["status"], "healthy", "{service}: {h}");
    }
    assert_eq!(h["metrics"]["totalEvents"], n as u64);
    assert_eq!(h["metrics"]["eventsByType"], serde_json::json!(by_type));
    assert!(humantime::parse_rfc3339(h["timestamp"].as_str().unwrap()).is_ok());
    let m = curl("GET", &format!("http://127.0.0.1:{}/metrics", world.health), None, None).json();
    let hours: BTreeMap<String, u64> =
        m["hourlyStats"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v["total"].as_u64().unwrap())).collect();
    assert_eq!(hours, by_hour);
    assert_eq!(m["productStatus"]["entities"], 40);
    assert_eq!(m["processing"]["rejected"], 0);
    // The host shows each stage's dependency, and weir_stage_up.
    let p = weir.get_json("/pipelines/analytics-service");
    let stages = p["stages"].as_array().unwrap();
    let archive_stage = stages.iter().find(|s| s["name"] == "archive").unwrap();
    assert_eq!(archive_stage["health"]["s3"]["up"], true, "{archive_stage}");
    assert_eq!(archive_stage["health"]["s3"]["target"], "s3://event-archive");
    assert_eq!(
        weir.metric(r#"weir_stage_up{pipeline="analytics-service",stage="recent-events",plugin="dynamodb",dependency="dynamodb"}"#),
        Some(1.0)
    );
    let admin = weir.get_json("/health");
    assert_eq!(admin["dependencies_down"], 0, "{admin}");
    assert_eq!(admin["dependencies"]["analytics-service"]["archive"]["s3"]["up"], true);
    assert!(!weir.logs().contains("minio123"), "no secret in the log");
}

#[test]
fn an_s3_outage_under_load_pauses_and_loses_nothing() {
    let world = World::new();
    let weir = world.start();
    produce_range(&world.broker, 0..200);
    world.wait_all_committed(&weir, 200, Duration::from_secs(60));
    let before = world.table();

    world.gate.close();
    let down = Instant::now();
    produce_range(&world.broker, 200..600);
    wait_for("/health to show s3 unhealthy", Duration::from_secs(20), || {
        let h = world.health();
        h.status == 503 && h.json()["services"]["s3"]["status"] == "unhealthy"
    });
    let h = world.health().json();
    assert_eq!(h["status"], "unhealthy");
    assert_eq!(h["services"]["dynamodb"]["status"], "healthy", "{h}");
    // While S3 is away no offset beyond what the archive has is committed.
    while down.elapsed() < Duration::from_secs(20) {
        let done = world.committed();
        assert!(done < 600, "committed {done} of 600 while S3 is down");
        std::thread::sleep(Duration::from_millis(500));
    }
    world.gate.open();
    world.wait_all_committed(&weir, 600, Duration::from_secs(60));
    wait_for("/health to show s3 healthy again", Duration::from_secs(10), || world.health().status == 200);

    let archive = world.archive();
    assert_eq!(archive.len(), 600, "the archive is complete");
    let table = world.table();
    assert_eq!(table.len(), 600, "every event once in DynamoDB");
    for (id, item) in &before {
        assert_eq!(table[id]["createdAt"], item["createdAt"], "{id} was not written again");
    }
}

#[test]
fn a_sigkill_mid_stream_loses_nothing() {
    let world = World::new();
    let mut weir = world.start();
    produce_range(&world.broker, 0..1000);
    wait_for("some events archived", Duration::from_secs(60), || world.committed() >= 150);
    weir.kill();
    let done = world.committed();
    assert!(done < 1000, "killed mid-stream: committed {done} of 1000");
    // The killed member's partitions move once its session (6 s here) expires.
    let weir = world.start();
    world.wait_all_committed(&weir, 1000, Duration::from_secs(180));
    let archive = world.archive();
    assert_eq!(archive.len(), 1000);
    for i in (0..1000).step_by(37) {
        let e = event(i);
        assert_eq!(archive.get(&archive_key(&e)), Some(&e));
    }
    assert_eq!(world.table().len(), 1000);
}
