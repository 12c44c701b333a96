//! A moto server (S3 and DynamoDB protocols) on a free loopback port, a TCP gate in front of
//! it that a test can close and open (the store "down" while moto keeps what it holds), and
//! the independent client (Python boto3).
#![allow(dead_code)]

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{free_port, repo, wait_for};

/// A running moto server, killed when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (scripts/deps.sh installs it)");
        let addr = format!("127.0.0.1:{port}");
        wait_for("moto to listen", Duration::from_secs(30), || TcpStream::connect(&addr).is_ok());
        Moto { child, endpoint: format!("http://{addr}") }
    }

    /// Runs the boto3 client against this server (or `endpoint`, such as a gate's).
    pub fn client(&self, args: &[&str]) -> String {
        aws_client(&self.endpoint, args)
    }

    /// Every object under `prefix` of `bucket`, as boto3 reads them: `(key, body)`.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        self.client(&["objects", bucket, prefix])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["key"].as_str().unwrap().to_owned(), v["body"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    /// Every item of `table`, as boto3 reads them.
    pub fn scan(&self, table: &str) -> Vec<serde_json::Value> {
        self.client(&["scan", table]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn aws_client(endpoint: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("tests/aws_client.py")).arg(endpoint).args(args);
    let out = cmd.stdin(Stdio::null()).output().expect("python3");
    assert!(out.status.success(), "aws_client.py {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let _ = std::io::stderr().write_all(&[]);
    String::from_utf8(out.stdout).unwrap()
}

/// A TCP forwarder to `target` that can be closed (new connections refused, open ones cut)
/// and opened again.
pub struct Gate {
    pub addr: String,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    pub fn new(target: &str) -> Gate {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !o.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let mut list = c.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Gate { addr, open, conns }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Refuses new connections and cuts the open ones.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
