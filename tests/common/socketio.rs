//! A real socket.io-client@4 (npm, run under Node by tests/clients/socketio_client.js) as a
//! test client: connect with its options, emit, and look at what it received.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{repo, wait_for};

/// Where scripts/deps.sh installed socket.io-client.
pub fn node_modules() -> PathBuf {
    let dir = std::env::var("WEIR_TEST_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/weir-test-node"));
    let modules = dir.join("node_modules");
    assert!(
        modules.join("socket.io-client").exists(),
        "socket.io-client is not installed in {}; run scripts/deps.sh (or npm install --prefix {} socket.io-client@4)",
        modules.display(),
        dir.display()
    );
    modules
}

/// One socket.io-client in its own Node process.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Client {
    /// Connects to `url` with socket.io-client `options` and waits until it is connected.
    pub fn connect(url: &str, options: Value) -> Client {
        let mut child = Command::new("node")
            .arg(repo().join("tests/clients/socketio_client.js"))
            .arg(url)
            .arg(options.to_string())
            .env("NODE_PATH", node_modules())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node is installed (scripts/deps.sh)");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    s.lock().unwrap().push(v);
                }
            }
        });
        let c = Client { child, stdin, seen };
        c.wait("the connection", Duration::from_secs(15), |seen| {
            if let Some(e) = seen.iter().find(|v| v["on"] == "connect_error") {
                panic!("socket.io-client could not connect: {e}");
            }
            seen.iter().any(|v| v["on"] == "connect")
        });
        c
    }

    pub fn send(&mut self, command: Value) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn emit(&mut self, event: &str, data: Value) {
        self.send(json!({ "emit": event, "data": data }));
    }

    /// What it printed with `"on": event`.
    pub fn got(&self, event: &str) -> Vec<Value> {
        self.seen.lock().unwrap().iter().filter(|v| v["on"] == event).cloned().collect()
    }

    /// The payloads of the `event`s it received.
    pub fn data(&self, event: &str) -> Vec<Value> {
        self.got(event).into_iter().map(|v| v["data"].clone()).collect()
    }

    /// Everything it printed.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connected(&self) -> Value {
        self.got("connect").into_iter().next().expect("connected")
    }

    pub fn wait(&self, what: &str, limit: Duration, cond: impl Fn(&[Value]) -> bool) {
        wait_for(what, limit, || cond(&self.seen.lock().unwrap()));
    }

    /// Waits for the `n`-th `event`.
    pub fn wait_count(&self, event: &str, n: usize, limit: Duration) {
        self.wait(&format!("{n} {event}"), limit, |seen| seen.iter().filter(|v| v["on"] == event).count() >= n);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}
