//! A real Kafka-protocol broker (tansu) for tests, on a free loopback port, and the
//! independent Python client (confluent-kafka) to produce and consume.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, repo, wait_for};

fn tansu() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let local = PathBuf::from(home).join(".cargo/bin/tansu");
    if local.exists() {
        return local;
    }
    PathBuf::from("tansu")
}

/// A running broker, killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    pub addr: String,
    storage: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// A broker keeping records in memory.
    pub fn memory() -> Broker {
        Self::start("memory://tansu/".into(), tempfile::tempdir().unwrap())
    }

    /// A broker keeping records in SQLite, so they survive a restart.
    pub fn persistent() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        // tansu resolves the path from its working directory, which is `dir`.
        Self::start("sqlite://tansu.db".into(), dir)
    }

    fn start(storage: String, dir: tempfile::TempDir) -> Broker {
        let port = free_port();
        let mut b = Broker { child: None, port, addr: format!("127.0.0.1:{port}"), storage, _dir: dir };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self._dir.path().join("tansu.log")).unwrap();
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", &self.storage])
            .current_dir(self._dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu is installed (cargo install tansu --version 0.6.0 --features dynostore,libsql --locked)");
        self.child = Some(child);
        let addr = self.addr.clone();
        wait_for("the broker to listen", Duration::from_secs(20), || std::net::TcpStream::connect(&addr).is_ok());
    }

    /// Creates a topic with the broker's own CLI.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu())
            .args(["topic", "create", name, "--partitions", &partitions.to_string(), "--broker", &format!("tcp://{}", self.addr)])
            .output()
            .unwrap();
        assert!(out.status.success(), "topic create failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the broker (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the broker wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client(args: &[&str], input: &str) -> String {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/kafka_client.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kafka_client.py {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Produces messages with confluent-kafka: each item is `(key, value)`.
pub fn produce(broker: &Broker, topic: &str, messages: &[(Option<&str>, &str)]) {
    produce_to(&broker.addr, topic, messages);
}

/// Like [`produce`], to the broker at `addr` (for a thread that does not own the broker).
pub fn produce_to(addr: &str, topic: &str, messages: &[(Option<&str>, &str)]) {
    let lines: Vec<String> = messages.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v}).to_string()).collect();
    client(&["produce", addr, topic], &(lines.join("\n") + "\n"));
}

/// A message read back.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub key: Option<String>,
    pub value: String,
    pub partition: i64,
    pub offset: i64,
    pub headers: serde_json::Value,
}

/// Reads `count` messages of `topic` from the beginning (a fresh group), or fails after
/// `secs`; with `count` 0, reads until nothing arrives for 3 s.
pub fn consume(broker: &Broker, topic: &str, count: usize, secs: u64) -> Vec<Consumed> {
    let group = format!("test-reader-{}", free_port());
    let out = client(&["consume", &broker.addr, topic, &group, &count.to_string(), &secs.to_string()], "");
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Consumed {
                key: v["key"].as_str().map(str::to_owned),
                value: v["value"].as_str().unwrap().to_owned(),
                partition: v["partition"].as_i64().unwrap(),
                offset: v["offset"].as_i64().unwrap(),
                headers: v["headers"].clone(),
            }
        })
        .collect()
}

/// The group's committed offsets on `topic` and the topic's end offsets (high watermarks, as
/// the broker reports them), each summed over the partitions, as the independent client
/// reads them: `(committed, end)`.
pub fn committed(broker: &Broker, topic: &str, group: &str) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(client(&["committed", &broker.addr, topic, group], "").trim()).unwrap();
    (v["committed"].as_u64().unwrap(), v["end"].as_u64().unwrap())
}
