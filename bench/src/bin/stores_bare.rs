//! `stores_bare`: the most the object_store and DynamoDB clients do here, for comparison with
//! Weir's `object_store` and `dynamodb` sinks writing the same records.
//!
//! ```text
//! stores_bare s3 ENDPOINT BUCKET FILE LINES   # JSON-lines objects of LINES records, 32 puts at once
//! stores_bare dynamodb ENDPOINT TABLE FILE    # the seed's items, BatchWriteItem of 25, 8 at once
//! stores_bare kafka-s3 ENDPOINT BUCKET BROKERS TOPIC COUNT LINES
//!                                             # an rdkafka consumer feeding the s3 loop (COUNT records)
//! ```
//! FILE holds one JSON event per line. Prints one JSON object: events, seconds, events per second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};
use weir_dynamodb::attribute;
use weir_plugin::serde_json::{self, Value};

fn report(n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"events\":{n},\"seconds\":{secs:.3},\"per_sec\":{:.0}}}", n as f64 / secs);
}

fn lines(file: &str) -> Vec<String> {
    std::fs::read_to_string(file).expect("events file").lines().map(str::to_owned).collect()
}

fn store(endpoint: &str, bucket: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_endpoint(endpoint)
            .with_access_key_id("bench")
            .with_secret_access_key("bench")
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .build()
            .expect("s3"),
    )
}

async fn s3(endpoint: &str, bucket: &str, file: &str, per_object: usize) {
    let store = store(endpoint, bucket);
    let lines = lines(file);
    let bodies: Vec<Vec<u8>> = lines.chunks(per_object).map(|c| c.iter().flat_map(|l| l.bytes().chain([b'\n'])).collect()).collect();
    let started = Instant::now();
    futures_util::stream::iter(bodies.into_iter().enumerate().map(|(i, body)| {
        let store = store.clone();
        async move { store.put(&Path::from(format!("bare/{i:08}.jsonl")), PutPayload::from(body)).await.map(|_| ()) }
    }))
    .buffer_unordered(32)
    .try_collect::<Vec<()>>()
    .await
    .expect("put");
    report(lines.len(), started);
}

/// What a program of its own would do for Kafka → S3: an rdkafka consumer (the settings of
/// `kafka_bare consume`, `KAFKA_SETTINGS` too) gathering LINES records per object, the puts
/// 32 at once; timed from the first record to the last put.
async fn kafka_s3(endpoint: &str, bucket: &str, brokers: &str, topic: &str, count: usize, per_object: usize) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let store = store(endpoint, bucket);
    let consumer: BaseConsumer = weir_bench::bare_consumer(brokers, "bare-s3").create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let started = Arc::new(std::sync::OnceLock::<Instant>::new());
    let first = started.clone();
    let reader = std::thread::spawn(move || {
        let (mut n, mut body) = (0, Vec::new());
        while n < count {
            if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(100)) {
                first.get_or_init(Instant::now);
                body.extend_from_slice(m.payload().unwrap_or_default());
                body.push(b'\n');
                n += 1;
                if n % per_object == 0 || n == count {
                    tx.blocking_send(std::mem::take(&mut body)).expect("the put loop is there");
                }
            }
        }
    });
    let bodies = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    bodies
        .enumerate()
        .map(|(i, body)| {
            let store = store.clone();
            async move { store.put(&Path::from(format!("bare-kafka/{i:08}.jsonl")), PutPayload::from(body)).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("put");
    reader.join().expect("consumer");
    report(count, *started.get().expect("a record arrived"));
}

async fn dynamodb(endpoint: &str, table: &str, file: &str) {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("bench", "bench", None, None, "bench"))
        .endpoint_url(endpoint)
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let events: Vec<Value> = lines(file).iter().map(|l| serde_json::from_str(l).expect("json")).collect();
    let started = Instant::now();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let chunks: Vec<Vec<WriteRequest>> = events
        .chunks(25)
        .map(|c| {
            c.iter()
                .map(|e| {
                    let mut item: HashMap<String, AttributeValue> = HashMap::new();
                    for (name, field) in
                        [("id", "/eventId"), ("eventId", "/eventId"), ("eventType", "/eventType"), ("timestamp", "/timestamp")]
                    {
                        item.insert(name.into(), attribute(e.pointer(field).unwrap_or(&Value::Null)));
                    }
                    item.insert("data".into(), attribute(e));
                    item.insert("createdAt".into(), AttributeValue::S(now.to_string()));
                    item.insert("ttl".into(), AttributeValue::N((now + 30 * 86_400).to_string()));
                    WriteRequest::builder().put_request(PutRequest::builder().set_item(Some(item)).build().unwrap()).build()
                })
                .collect()
        })
        .collect();
    futures_util::stream::iter(chunks.into_iter().map(|mut pending| {
        let client = client.clone();
        async move {
            while !pending.is_empty() {
                let out = client.batch_write_item().request_items(table, pending).send().await?;
                pending = out.unprocessed_items.and_then(|mut m| m.remove(table)).unwrap_or_default();
            }
            Ok::<_, aws_sdk_dynamodb::Error>(())
        }
    }))
    .buffer_unordered(8)
    .try_collect::<Vec<()>>()
    .await
    .expect("batch write");
    report(events.len(), started);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("s3") if args.len() == 6 => s3(&args[2], &args[3], &args[4], args[5].parse().expect("LINES")).await,
        Some("dynamodb") if args.len() == 5 => dynamodb(&args[2], &args[3], &args[4]).await,
        Some("kafka-s3") if args.len() == 8 => {
            kafka_s3(&args[2], &args[3], &args[4], &args[5], args[6].parse().expect("COUNT"), args[7].parse().expect("LINES")).await
        }
        _ => eprintln!(
            "usage: stores_bare s3 ENDPOINT BUCKET FILE LINES | stores_bare dynamodb ENDPOINT TABLE FILE | stores_bare kafka-s3 \
             ENDPOINT BUCKET BROKERS TOPIC COUNT LINES"
        ),
    }
}
