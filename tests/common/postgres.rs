//! PostgreSQL for the tests: psql (an independent client) against the machine's server,
//! a schema of a test's own there, or a cluster of a test's own that it may stop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use super::free_port;

/// The machine's server (trust auth), database `test`.
pub const SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Runs SQL with psql and returns its unaligned output, without the final line break.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql").args([url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().expect("psql");
    assert!(out.status.success(), "psql failed on {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim_end_matches('\n').to_owned()
}

/// A schema of the test's own in the machine's database, dropped afterwards.
pub struct Schema(pub String);

impl Schema {
    /// A fresh schema named after `tag`.
    pub fn new(tag: &str) -> Schema {
        let name = format!("weir_{tag}_{}", free_port());
        psql(SERVER, &format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
        Schema(name)
    }
}

/// A database of its own on the machine's server, dropped with the value (for an example
/// that creates its own schemas and tables).
pub struct Database {
    /// Its connection string.
    pub url: String,
    name: String,
}

impl Database {
    /// A fresh database named after `tag`.
    pub fn new(tag: &str) -> Database {
        let name = format!("weir_{tag}_{}", free_port());
        psql(SERVER, &format!("CREATE DATABASE {name}"));
        Database { url: format!("postgres://postgres@127.0.0.1:5432/{name}"), name }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ =
            Command::new("psql").args([SERVER, "-X", "-q", "-c", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)]).output();
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql").args([SERVER, "-X", "-q", "-c", &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0)]).output();
    }
}

/// A PostgreSQL cluster of the test's own, on a free port, so it can be stopped.
pub struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
}

impl Cluster {
    pub fn new() -> Cluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL binaries")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .max()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // initdb refuses to run as root: the cluster belongs to the postgres user.
        Command::new("chown").args(["-R", "postgres:postgres", dir.path().to_str().unwrap()]).status().unwrap();
        let as_pg = |args: &[&str]| {
            let out = Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        as_pg(&[bin.join("initdb").to_str().unwrap(), "-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres"]);
        let c = Cluster { dir, port: free_port(), bin };
        c.start();
        c
    }

    pub fn ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let ctl = self.bin.join("pg_ctl");
        let mut all = vec![ctl.to_str().unwrap(), "-D", data.to_str().unwrap(), "-o", &opts, "-w", "-l"];
        let log = self.dir.path().join("pg.log");
        all.push(log.to_str().unwrap());
        all.extend_from_slice(args);
        let out = Command::new("runuser").args(["-u", "postgres", "--"]).args(&all).output().unwrap();
        assert!(out.status.success(), "pg_ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn start(&self) {
        self.ctl(&["start"]);
    }

    pub fn stop(&self) {
        self.ctl(&["-m", "fast", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                self.bin.join("pg_ctl").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}
