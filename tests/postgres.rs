//! PostgreSQL sink end to end, against the machine's PostgreSQL (each test in its own
//! schema) or a throwaway cluster of the test's own, checked with psql.

#[path = "common/broker.rs"]
mod broker;
mod common;
#[path = "common/postgres.rs"]
mod pg;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::{produce, Broker};
use common::*;
use pg::{psql, Cluster, Database, Schema, SERVER};

/// The Nexus seed's columns, with `event_id` as the unique key.
fn nexus_sink(url: &str, table: &str) -> String {
    format!(
        r#"  - plugin: postgres
    config:
      url: "{url}"
      table: {table}
      create: true
      unique_key: [event_id]
      columns:
        - {{name: id, type: SERIAL PRIMARY KEY}}
        - {{name: event_type, type: VARCHAR(100) NOT NULL, from: /event_type}}
        - {{name: user_id, type: VARCHAR(100) NOT NULL, from: /user_id}}
        - {{name: service, type: VARCHAR(50) NOT NULL, from: /service}}
        - {{name: timestamp, type: TIMESTAMP NOT NULL, from: /timestamp}}
        - {{name: data, type: JSONB, from: /data}}
        - {{name: created_at, type: TIMESTAMP DEFAULT CURRENT_TIMESTAMP}}
        - {{name: event_id, type: VARCHAR(200) NOT NULL, from: /event_id, fallback: "{{{{header:kafka.topic}}}}/{{{{header:kafka.partition}}}}/{{{{header:kafka.offset}}}}"}}
"#
    )
}

fn replay(dir: &Path, file: &Path, table: &str) {
    write_pipeline(
        dir,
        "store",
        &format!("source: {{plugin: file, config: {{path: {}}}}}\nsinks:\n{}", file.display(), nexus_sink(SERVER, table)),
    );
    let out = weir(&["run", "--once", "--pipelines", dir.to_str().unwrap(), "--admin", &format!("127.0.0.1:{}", free_port())], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_nexus_table_is_created_as_the_seed_writes_it_and_types_map() {
    let schema = Schema::new("types");
    let table = format!("{}.events", schema.0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"event_id":"e1","event_type":"user.login","user_id":"u1","service":"auth-service","timestamp":"2024-01-01T14:00:00+02:00","data":{"ip":"203.0.113.7","device":{"os":"linux","tags":["a","b"]}}}"#,
            "\n",
            r#"{"event_id":"e2","event_type":"user.registered","user_id":"u2","service":"auth-service","timestamp":"2024-01-01T12:30:00Z"}"#,
            "\n",
            r#"{"event_id":"e3","event_type":"user.logout","user_id":"u1","service":"auth-service","timestamp":1704112200}"#,
            "\n",
        ),
    )
    .unwrap();
    replay(dir.path(), &file, &table);
    let columns = psql(
        SERVER,
        &format!(
            "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default IS NOT NULL FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 'events' ORDER BY ordinal_position",
            schema.0
        ),
    );
    assert_eq!(
        columns,
        [
            "id|integer||NO|t",
            "event_type|character varying|100|NO|f",
            "user_id|character varying|100|NO|f",
            "service|character varying|50|NO|f",
            "timestamp|timestamp without time zone||NO|f",
            "data|jsonb||YES|f",
            "created_at|timestamp without time zone||YES|t",
            "event_id|character varying|200|NO|f",
        ]
        .join("\n")
    );
    let unique =
        psql(SERVER, &format!("SELECT indexdef FROM pg_indexes WHERE schemaname = '{}' AND indexname = 'events_event_id_key'", schema.0));
    assert!(unique.starts_with("CREATE UNIQUE INDEX events_event_id_key"), "{unique}");
    let rows = psql(SERVER, &format!("SELECT event_id, timestamp, data->'device'->'tags'->>1 FROM {table} ORDER BY event_id"));
    assert_eq!(rows, "e1|2024-01-01 12:00:00|b\ne2|2024-01-01 12:30:00|\ne3|2024-01-01 12:30:00|");
    // The seed's own queries work on what was stored.
    let by_type =
        psql(SERVER, &format!("SELECT event_type, COUNT(*) as count FROM {table} GROUP BY event_type ORDER BY count DESC, event_type"));
    assert_eq!(by_type, "user.login|1\nuser.logout|1\nuser.registered|1");
}

#[test]
fn the_same_batch_delivered_twice_leaves_one_row_per_key() {
    let schema = Schema::new("idem");
    let table = format!("{}.events", schema.0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let lines: Vec<String> = (0..500)
        .map(|i| {
            format!(
                r#"{{"event_id":"id-{i}","event_type":"user.login","user_id":"u{}","service":"auth","timestamp":"2024-01-01T00:00:00Z"}}"#,
                i % 7
            )
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    replay(dir.path(), &file, &table);
    replay(dir.path(), &file, &table);
    assert_eq!(psql(SERVER, &format!("SELECT count(*), count(DISTINCT event_id) FROM {table}")), "500|500");
}

#[test]
fn a_poison_record_is_rejected_with_the_database_message_and_the_rest_lands() {
    let schema = Schema::new("poison");
    let table = format!("{}.events", schema.0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_pipeline(
        dir.path(),
        "ingest",
        &format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\nsinks:\n{}", nexus_sink(SERVER, &table)),
    );
    let _weir = Weir::start(dir.path(), &[], &[]);
    let long = "s".repeat(60);
    let body = format!(
        r#"[{{"event_id":"a","event_type":"t","user_id":"u","service":"ok","timestamp":"2024-01-01T00:00:00Z"}},
            {{"event_id":"b","event_type":"t","user_id":"u","service":"{long}","timestamp":"2024-01-01T00:00:00Z"}},
            {{"event_id":"c","event_type":"t","user_id":"u","service":"ok","timestamp":"2024-01-01T00:00:00Z"}},
            {{"event_id":"d","event_type":"t","service":"ok","timestamp":"2024-01-01T00:00:00Z"}}]"#
    );
    let r = post_json(&format!("http://127.0.0.1:{port}/produce"), &body);
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["accepted"], 2, "{v}");
    assert_eq!(v["rejected"][0]["index"], 1);
    let reason = v["rejected"][0]["error"].as_str().unwrap();
    assert!(reason.contains("value too long for type character varying(50)") && reason.contains("22001"), "{reason}");
    assert_eq!(v["rejected"][1]["index"], 3);
    assert!(v["rejected"][1]["error"].as_str().unwrap().contains("column user_id needs a value"), "{v}");
    assert_eq!(psql(SERVER, &format!("SELECT string_agg(event_id, ',' ORDER BY event_id) FROM {table}")), "a,c");
}

#[test]
fn kafka_redelivery_never_duplicates_rows_even_without_event_ids() {
    let schema = Schema::new("kafka");
    let table = format!("{}.events", schema.0);
    let broker = Broker::persistent();
    broker.create_topic("user-events", 2);
    let msgs: Vec<String> = (0..40)
        .map(|i| {
            let id = if i % 2 == 0 { format!(r#""event_id":"k{i}","#) } else { String::new() };
            format!(r#"{{{id}"event_type":"user.profile_viewed","user_id":"u{i}","service":"user-service","timestamp":"2024-01-01T00:00:00Z","data":{{"n":{i}}}}}"#)
        })
        .collect();
    produce(&broker, "user-events", &msgs.iter().map(|m| (None, m.as_str())).collect::<Vec<_>>());
    let run = |group: &str| {
        let dir = tempfile::tempdir().unwrap();
        write_pipeline(
            dir.path(),
            "store",
            &format!(
                "source: {{plugin: kafka, config: {{brokers: \"{}\", topics: [user-events], group_id: {group}}}}}\nsinks:\n{}",
                broker.addr,
                nexus_sink(SERVER, &table)
            ),
        );
        let weir = Weir::start(dir.path(), &[], &[]);
        wait_for("40 rows", Duration::from_secs(30), || psql(SERVER, &format!("SELECT count(*) FROM {table}")) == "40");
        wait_for("the whole topic read", Duration::from_secs(30), || {
            weir.metric(r#"weir_stage_records_out_total{pipeline="store",stage="postgres",plugin="postgres"}"#) == Some(40.0)
        });
    };
    run("analytics-1");
    // A new group reads everything again: nothing is stored twice.
    run("analytics-2");
    assert_eq!(psql(SERVER, &format!("SELECT count(*), count(DISTINCT event_id) FROM {table}")), "40|40");
    assert_eq!(psql(SERVER, &format!("SELECT count(*) FROM {table} WHERE event_id LIKE 'user-events/%'")), "20");
}

#[test]
fn postgres_stopped_for_30_seconds_loses_nothing_and_pushes_back() {
    let cluster = Cluster::new();
    let url = cluster.url();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    write_pipeline(
        dir.path(),
        "ingest",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\", backpressure_wait_ms: 100, ack_timeout_ms: 3000}}}}\nsinks:\n{}settings: {{queue_batches: 4, sink_queue_batches: 4}}\n",
            nexus_sink(&url, "analytics.events")
        ),
    );
    let weir = Weir::start(dir.path(), &[], &[]);
    let pid = weir.pid();
    let produce_url = format!("http://127.0.0.1:{port}/produce");
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let client = {
        let (stop, accepted, refused) = (stop.clone(), accepted.clone(), refused.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<String> = (0..10).map(|i| format!("ev-{n}-{i}")).collect();
                let events: Vec<String> = ids
                    .iter()
                    .map(|id| {
                        format!(r#"{{"event_id":"{id}","event_type":"t","user_id":"u","service":"s","timestamp":"2024-01-01T00:00:00Z"}}"#)
                    })
                    .collect();
                let r = post_json(&produce_url, &format!("[{}]", events.join(",")));
                match r.status {
                    200 => accepted.lock().unwrap().extend(ids),
                    503 => {
                        *refused.lock().unwrap() += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    s => panic!("unexpected {s}: {r:?}"),
                }
                n += 1;
            }
        })
    };
    wait_for("traffic", Duration::from_secs(10), || accepted.lock().unwrap().len() >= 200);
    cluster.stop();
    let mut peak: f64 = 0.0;
    let outage = std::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        peak = peak.max(rss_mb(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = *refused.lock().unwrap();
    cluster.start();
    let before = accepted.lock().unwrap().len();
    let restarted = std::time::Instant::now();
    wait_for("requests accepted again", Duration::from_secs(30), || accepted.lock().unwrap().len() > before + 100);
    let recovered = restarted.elapsed();
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert!(during > 0, "the source pushed back while PostgreSQL was down");
    assert!(peak < 150.0, "memory stayed bounded: peak RSS {peak:.0} MiB");
    let accepted = accepted.lock().unwrap().clone();
    let stored_url = url.clone();
    wait_for("every accepted event stored", Duration::from_secs(30), || {
        psql(&stored_url, "SELECT count(*) FROM analytics.events").parse::<usize>().unwrap() >= accepted.len()
    });
    let stored: Vec<String> = psql(&url, "SELECT event_id FROM analytics.events").lines().map(str::to_owned).collect();
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no event stored twice");
    for id in &accepted {
        assert!(unique.contains(id), "accepted event {id} is missing");
    }
    println!(
        "accepted {}, stored {}, lost 0, refused requests during the outage {during}, peak RSS {peak:.0} MiB, recovered in {recovered:?}",
        accepted.len(),
        stored.len()
    );
}

#[test]
fn tls_require_encrypts_the_connection() {
    let schema = Schema::new("tls");
    let table = format!("{}.events", schema.0);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let app = format!("weir-tls-{port}");
    let url = format!("{SERVER}?application_name={app}");
    let sink = nexus_sink(&url, &table).replace("      create: true\n", "      create: true\n      tls: require\n");
    write_pipeline(dir.path(), "tls", &format!("source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\nsinks:\n{sink}"));
    let _weir = Weir::start(dir.path(), &[], &[]);
    let r = post_json(
        &format!("http://127.0.0.1:{port}/produce"),
        r#"{"event_id":"t1","event_type":"t","user_id":"u","service":"s","timestamp":"2024-01-01T00:00:00Z"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let ssl = psql(
        SERVER,
        &format!("SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{app}'"),
    );
    assert_eq!(ssl, "t", "the sink's connection uses TLS");
    assert_eq!(psql(SERVER, &format!("SELECT event_id FROM {table}")), "t1");
}

#[test]
fn the_nexus_example_stores_events_and_serves_the_seed_metrics() {
    let broker = Broker::persistent();
    broker.create_topic("user-events", 1);
    // Its own database, so the example's analytics schema touches nothing else.
    let db = Database::new("nexus");
    let url = db.url.clone();
    let events = [
        r#"{"event_id":"e1","event_type":"user.login","user_id":"u1","service":"auth-service","timestamp":"2024-11-08T12:34:56Z","data":{"ip":"203.0.113.7"}}"#,
        r#"{"event_id":"e2","event_type":"user.registered","user_id":"u2","service":"auth-service","timestamp":"2024-11-08T12:35:00Z"}"#,
        r#"{"event_type":"user.profile_viewed","user_id":"u1","service":"user-service","timestamp":"2024-11-08T12:36:00Z","data":{}}"#,
        // Refused by PostgreSQL: `service` is longer than VARCHAR(50).
        r#"{"event_id":"e4","event_type":"user.login","user_id":"u3","service":"a-service-name-far-longer-than-fifty-characters-allow","timestamp":"2024-11-08T12:37:00Z"}"#,
    ];
    produce(&broker, "user-events", &events.iter().map(|e| (None, *e)).collect::<Vec<_>>());
    let metrics = format!("127.0.0.1:{}", free_port());
    let envs = [("KAFKA_BROKERS", broker.addr.as_str()), ("DATABASE_URL", url.as_str()), ("METRICS_LISTEN", metrics.as_str())];
    let _weir = Weir::start(&repo().join("examples/nexus-analytics"), &[], &envs);
    wait_for("three rows", Duration::from_secs(30), || {
        Command::new("psql")
            .args([url.as_str(), "-XAtc", "SELECT count(*) FROM analytics.events"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "3")
    });
    // The seed's own queries.
    let by_type =
        psql(&url, "SELECT event_type, COUNT(*) as count FROM analytics.events GROUP BY event_type ORDER BY count DESC, event_type");
    assert_eq!(by_type, "user.login|1\nuser.profile_viewed|1\nuser.registered|1");
    let recent = psql(&url, "SELECT event_type FROM analytics.events ORDER BY timestamp DESC LIMIT 10");
    assert_eq!(recent, "user.profile_viewed\nuser.registered\nuser.login");
    assert_eq!(psql(&url, "SELECT event_id FROM analytics.events WHERE event_type = 'user.profile_viewed'"), "user-events/0/2");
    // The metrics sink runs after PostgreSQL handled each event.
    let metrics_url = format!("http://{metrics}/metrics");
    wait_for("all four events counted", Duration::from_secs(30), || {
        curl("GET", &metrics_url, None, None).body.contains("analytics_events_processing_duration_seconds_count 4")
    });
    let text = curl("GET", &metrics_url, None, None).body;
    assert!(text.contains(r#"analytics_events_processed_total{event_type="user.login",service="auth-service"} 1"#), "{text}");
    assert!(text.contains("analytics_events_stored_total 3\n"), "{text}");
    assert!(
        text.contains(r#"analytics_events_processing_errors_total{event_type="user.login",service="a-service-name-far-longer-than-fifty-characters-allow"} 1"#),
        "{text}"
    );
    let health = curl("GET", &format!("http://{metrics}/health"), None, None).json();
    assert_eq!(health, serde_json::json!({"status": "healthy", "service": "analytics-service"}));
}

#[test]
fn the_routed_nexus_example_stores_failures_and_deactivations_in_their_own_tables() {
    let broker = Broker::memory();
    broker.create_topic("user-events", 1);
    // Its own database, so the example's analytics schema touches nothing else.
    let db = Database::new("nexus_routed");
    let url = db.url.clone();
    let types = ["user.login", "user.deactivated", "payment.failed", "user.profile_updated", "user.error", "user.deactivated"];
    let events: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(r#"{{"event_id":"e{i}","event_type":"{t}","user_id":"u{i}","service":"users","timestamp":"2024-11-08T12:00:0{i}Z"}}"#)
        })
        .collect();
    produce(&broker, "user-events", &events.iter().map(|e| (None, e.as_str())).collect::<Vec<_>>());
    let metrics = format!("127.0.0.1:{}", free_port());
    let envs = [("KAFKA_BROKERS", broker.addr.as_str()), ("DATABASE_URL", url.as_str()), ("METRICS_LISTEN", metrics.as_str())];
    let _weir = Weir::start(&repo().join("examples/nexus-analytics/routed"), &[], &envs);
    // Where each event belongs, decided here from its type.
    let failed = |t: &str| t.ends_with(".failed") || t.ends_with(".error");
    let expect = |pick: &dyn Fn(&str) -> bool| -> String {
        types.iter().enumerate().filter(|(_, t)| pick(t)).map(|(i, _)| format!("e{i}")).collect::<Vec<_>>().join("\n")
    };
    let tables = [
        ("analytics.events", expect(&|t| !failed(t) && t != "user.deactivated")),
        ("analytics.event_errors", expect(&|t| failed(t))),
        ("analytics.user_deactivations", expect(&|t| !failed(t) && t == "user.deactivated")),
    ];
    wait_for("every event in its table", Duration::from_secs(30), || {
        tables.iter().all(|(table, ids)| {
            Command::new("psql")
                .args([url.as_str(), "-XAtc", &format!("SELECT event_id FROM {table} ORDER BY event_id")])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == ids)
        })
    });
    // The metrics sink still counts what analytics.events stored.
    wait_for("the stored events counted", Duration::from_secs(30), || {
        curl("GET", &format!("http://{metrics}/metrics"), None, None).body.contains("analytics_events_stored_total 2\n")
    });
}

#[test]
fn a_hundred_thousand_events_through_kafka_into_postgresql_survive_three_sigkills_exactly_once() {
    let schema = Schema::new("sigkill");
    let table = format!("{}.events", schema.0);
    let broker = Broker::persistent();
    broker.create_topic("user-events", 4);
    let total = 100_000usize;
    let msgs: Vec<String> = (0..total)
        .map(|i| {
            format!(
                r#"{{"event_id":"e{i}","event_type":"user.login","user_id":"u{}","service":"auth","timestamp":"2024-01-01T00:00:00Z","data":{{"n":{i}}}}}"#,
                i % 1000
            )
        })
        .collect();
    let keyed: Vec<String> = (0..total).map(|i| format!("u{}", i % 1000)).collect();
    produce(&broker, "user-events", &msgs.iter().zip(&keyed).map(|(m, k)| (Some(k.as_str()), m.as_str())).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        "store",
        &format!(
            "source: {{plugin: kafka, config: {{brokers: \"{}\", topics: [user-events], group_id: weir-sigkill, session_timeout_ms: 6000}}}}\nsinks:\n{}",
            broker.addr,
            nexus_sink(SERVER, &table)
        ),
    );
    let count = || psql(SERVER, &format!("SELECT count(*) FROM {table}")).parse::<usize>().unwrap_or(0);
    let mut weir = Weir::start(dir.path(), &[], &[]);
    let mut peak: f64 = 0.0;
    let mut recoveries = Vec::new();
    for k in 1..=3 {
        let target = total * k / 4;
        let pid = weir.pid();
        wait_for("rows before the kill", Duration::from_secs(120), || {
            peak = peak.max(rss_mb(pid));
            count() >= target
        });
        weir.kill();
        let at_kill = count();
        // The test broker (tansu 0.6) hands a dead member's partitions to a member that joined
        // before the dead one's session expired only on a later rebalance; a replacement
        // started after the session timeout (as a supervisor's restart backoff would) gets
        // them at once.
        std::thread::sleep(Duration::from_millis(6500));
        let restarted = std::time::Instant::now();
        weir = Weir::start(dir.path(), &[], &[]);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while count() <= at_kill {
            assert!(std::time::Instant::now() < deadline, "no progress after restart {k} ({at_kill} rows):\n{}", weir.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        recoveries.push(restarted.elapsed());
    }
    let pid = weir.pid();
    wait_for("every event stored", Duration::from_secs(180), || {
        peak = peak.max(rss_mb(pid));
        count() >= total
    });
    assert_eq!(psql(SERVER, &format!("SELECT count(*), count(DISTINCT event_id) FROM {table}")), format!("{total}|{total}"));
    let missing = psql(
        SERVER,
        &format!(
            "SELECT count(*) FROM generate_series(0, {}) g WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE event_id = 'e' || g)",
            total - 1
        ),
    );
    assert_eq!(missing, "0");
    println!("100000 events, 3 SIGKILLs: lost 0, stored twice 0, peak RSS {peak:.0} MiB, first progress after each restart {recoveries:?}");
}

#[test]
fn a_table_renamed_while_running_fails_its_records_loudly_and_is_not_re_created() {
    let schema = Schema::new("renamed");
    let table = format!("{}.events", schema.0);
    let dir = tempfile::tempdir().unwrap();
    let letters = dir.path().join("dead.jsonl");
    let port = free_port();
    write_pipeline(
        dir.path(),
        "ingest",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\nsinks:\n{}dead_letter: {{plugin: file, config: {{path: {}}}}}\n",
            nexus_sink(SERVER, &table),
            letters.display()
        ),
    );
    let weir = Weir::start(dir.path(), &[], &[]);
    let url = format!("http://127.0.0.1:{port}/produce");
    let event = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","event_type":"t","user_id":"u","service":"s","timestamp":"2024-01-01T00:00:00Z","data":{{"n":12345678901234567890123}}}}"#
        )
    };
    assert_eq!(post_json(&url, &event("before")).status, 200);
    psql(SERVER, &format!("ALTER TABLE {table} RENAME TO events_old"));

    // Twice: the second time the sink has connected afresh, which must not create it either.
    for id in ["during-1", "during-2"] {
        let r = post_json(&url, &event(id));
        assert_eq!(r.status, 500, "{r:?}");
        let error = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(&format!("table {table} does not exist any more")), "{error}");
        assert!(error.contains("dropped or renamed while the sink was running"), "{error}");
        assert_eq!(psql(SERVER, &format!("SELECT to_regclass('{table}') IS NULL")), "t", "the table was re-created");
    }
    assert_eq!(psql(SERVER, &format!("SELECT string_agg(event_id, ',') FROM {}.events_old", schema.0)), "before");
    // The failed records went to the dead letters with the reason, as they were sent.
    let dead = std::fs::read_to_string(&letters).unwrap();
    let dead: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["outcome"], "failed");
    assert!(dead[0]["reason"].as_str().unwrap().contains("dropped or renamed"), "{:?}", dead[0]);
    let raw = std::fs::read_to_string(&letters).unwrap();
    assert!(raw.contains(&format!(r#""record":{}"#, event("during-1"))), "the dead letter holds the record as sent: {raw}");
    assert!(weir.logs().contains("dropped or renamed"), "the failure is logged");

    // Renamed back, the sink writes again.
    psql(SERVER, &format!("ALTER TABLE {}.events_old RENAME TO events", schema.0));
    assert_eq!(post_json(&url, &event("after")).status, 200);
    assert_eq!(psql(SERVER, &format!("SELECT string_agg(event_id, ',' ORDER BY event_id) FROM {table}")), "after,before");
}

#[test]
fn retention_deletes_exactly_the_old_rows_while_ingest_goes_on() {
    let schema = Schema::new("retention");
    let table = format!("{}.events", schema.0);
    let scene = Scene::new();
    scene.pipeline(
        "aging",
        &format!(
            "source:\n  plugin: http\n  config: {{listen: \"127.0.0.1:@PORT@\"}}\nsinks:\n  - plugin: postgres\n    config:\n      url: \"{SERVER}\"\n      table: {table}\n      create: true\n      unique_key: [event_id]\n      columns:\n        - {{name: event_id, type: TEXT NOT NULL, from: /event_id}}\n        - {{name: ts, type: TIMESTAMP NOT NULL, from: /ts}}\n      retention: {{column: ts, keep: 1d, every: 1s, batch: 100}}\n"
        ),
    );
    let weir = scene.start(&["--no-watch"], &[]);
    let url = scene.url("/produce");
    // 1,000 rows from long ago, and rows from today posted all along.
    let old: Vec<String> = (0..1000).map(|i| format!(r#"{{"event_id":"old{i}","ts":"2020-01-01T00:00:00Z"}}"#)).collect();
    for chunk in old.chunks(250) {
        assert_eq!(post_json(&url, &format!("[{}]", chunk.join(","))).status, 200);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let posted = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                let batch: Vec<String> = (n..n + 50).map(|i| format!(r#"{{"event_id":"new{i}","ts":"{now}"}}"#)).collect();
                assert_eq!(post_json(&url, &format!("[{}]", batch.join(","))).status, 200);
                n += 50;
            }
            n
        })
    };
    let count = |filter: &str| psql(SERVER, &format!("SELECT count(*) FROM {table} WHERE {filter}")).parse::<u64>().unwrap();
    wait_for("the old rows deleted", Duration::from_secs(60), || count("event_id LIKE 'old%'") == 0 && count("event_id LIKE 'new%'") > 500);
    stop.store(true, Ordering::Relaxed);
    let new = posted.join().unwrap();
    assert_eq!(count("event_id LIKE 'new%'"), new, "every row of today stays");
    wait_for("the deleted rows counted", Duration::from_secs(10), || {
        weir.metric(r#"weir_plugin_postgres_rows_expired_total{pipeline="aging",stage="postgres",plugin="postgres"}"#) == Some(1000.0)
    });
}
