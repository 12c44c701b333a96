//! `kafka_bare`: the most rust-rdkafka does here, for comparison with Weir's Kafka plugin.
//!
//! ```text
//! kafka_bare produce BROKERS TOPIC FILE     # JSON lines; same producer settings as Weir's sink
//! kafka_bare consume BROKERS TOPIC COUNT    # a fresh group from the beginning
//! ```
//! Prints one JSON object: messages, seconds, messages per second.

use std::io::BufRead;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

fn report(n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"messages\":{n},\"seconds\":{secs:.3},\"per_sec\":{:.0}}}", n as f64 / secs);
}

fn produce(brokers: &str, topic: &str, file: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(file).expect("file")).lines().map(|l| l.unwrap()).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = Instant::now();
    // Same shape as Weir's sink: batches of 1000, each awaited before the next.
    for chunk in lines.chunks(1000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for line in chunk {
            let mut record = FutureRecord::<(), _>::to(topic).payload(line.as_bytes());
            loop {
                match producer.send_result(record) {
                    Ok(d) => {
                        pending.push(d);
                        break;
                    }
                    Err((_, back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(5));
                    }
                }
            }
        }
        rt.block_on(async {
            for d in pending {
                d.await.expect("delivered").expect("acknowledged");
            }
        });
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    report(lines.len(), started);
}

fn consume(brokers: &str, topic: &str, count: usize) {
    let consumer: BaseConsumer = weir_bench::bare_consumer(brokers, "bare").create().expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    let mut n = 0;
    let mut started = None;
    while n < count {
        if let Some(Ok(_m)) = consumer.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            n += 1;
        }
    }
    report(n, started.unwrap_or_else(Instant::now));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("produce") => produce(&args[2], &args[3], &args[4]),
        Some("consume") => consume(&args[2], &args[3], args[4].parse().expect("count")),
        _ => eprintln!("usage: kafka_bare produce BROKERS TOPIC FILE | consume BROKERS TOPIC COUNT"),
    }
}
