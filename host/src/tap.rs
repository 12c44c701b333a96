//! Taps: the records passing a stage, for the live console and `weir tap`. A stage's tap
//! copies nothing until someone reads it; a read keeps it open for [`OPEN_FOR`], during
//! which the stage copies the first [`PER_BATCH`] records of each batch it passes on into a
//! ring of the last [`KEPT`]. Readers follow the ring by sequence number (`after`), waiting
//! for records up to a limit. Values of members named like secrets (`password`, `token`, …)
//! are masked in the copy, whole; a record that is not JSON or is too long to check is
//! shown only by its size.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use weir_plugin::batch::BatchRef;

/// How long a read keeps a tap open.
pub const OPEN_FOR: Duration = Duration::from_secs(30);
/// Records copied per batch at most.
pub const PER_BATCH: usize = 50;
/// Records a tap keeps.
pub const KEPT: usize = 200;
/// Longest record copied whole, in bytes.
const LONGEST: usize = 16 * 1024;

/// One record seen at a stage.
#[derive(Debug, Clone, Serialize)]
pub struct Tapped {
    /// Its number in the tap (increasing).
    pub seq: u64,
    /// When the stage passed it (RFC 3339).
    pub time: String,
    /// Its key, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its value: JSON with secrets masked, or text.
    pub value: Value,
}

/// A stage's tap.
#[derive(Debug, Default)]
pub struct Tap {
    /// Milliseconds since the Unix epoch until which the tap is open (0: closed).
    open_until: AtomicU64,
    /// The last records.
    ring: Mutex<VecDeque<Tapped>>,
    arrived: Condvar,
}

/// The next record's number, across every tap of the process: a reader that moves to the
/// next version of a pipeline (a reload) keeps its place.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// `value` with the members named like secrets masked.
fn masked(mut value: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if crate::config::secret_name(k) {
                        *v = Value::String("***".into());
                    } else {
                        walk(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}

/// A record's bytes as the tap shows them.
fn shown(bytes: &[u8]) -> Value {
    if bytes.len() > LONGEST {
        return Value::String(format!("({} bytes: longer than a tap shows)", bytes.len()));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => masked(v),
        // Text could hold a secret the tap cannot find.
        Err(_) => Value::String(format!("({} bytes, not JSON: not shown)", bytes.len())),
    }
}

impl Tap {
    /// Whether someone reads it now: one atomic load when nobody does.
    pub fn open(&self) -> bool {
        let until = self.open_until.load(Relaxed);
        until != 0 && now_ms() < until
    }

    /// Copies the first records of `batch`, when the tap is open.
    pub fn capture(&self, batch: &BatchRef<'_>) {
        self.capture_where(batch, |_| true);
    }

    /// Copies the first records of `batch` for which `passed(index)` holds, when the tap is open.
    pub fn capture_where(&self, batch: &BatchRef<'_>, passed: impl Fn(usize) -> bool) {
        if !self.open() || batch.is_empty() {
            return;
        }
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let copies: Vec<(Option<String>, Value)> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| passed(*i))
            .map(|(_, r)| r)
            .take(PER_BATCH)
            .map(|r| (r.key.map(|k| String::from_utf8_lossy(k).into_owned()), shown(r.value)))
            .collect();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        for (key, value) in copies {
            let seq = NEXT.fetch_add(1, Relaxed);
            ring.push_back(Tapped { seq, time: time.clone(), key, value });
            if ring.len() > KEPT {
                ring.pop_front();
            }
        }
        drop(ring);
        self.arrived.notify_all();
    }

    /// Opens the tap (for [`OPEN_FOR`] from now) and returns up to `max` records numbered
    /// above `after` (every record kept when `after` is `None`), waiting up to `wait` for
    /// the first; also the number to pass as `after` next time.
    pub fn read(&self, after: Option<u64>, max: usize, wait: Duration) -> (Vec<Tapped>, Option<u64>) {
        self.open_until.store(now_ms() + OPEN_FOR.as_millis() as u64, Relaxed);
        let deadline = Instant::now() + wait;
        let newer = |ring: &VecDeque<Tapped>| ring.iter().any(|t| after.is_none_or(|a| t.seq > a));
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        while !newer(&ring) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            ring = self.arrived.wait_timeout(ring, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        let records: Vec<Tapped> = ring.iter().filter(|t| after.is_none_or(|a| t.seq > a)).take(max).cloned().collect();
        let next = records.last().map(|t| t.seq).or(after);
        (records, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::json_batch;

    #[test]
    fn a_closed_tap_copies_nothing_and_an_open_one_masks_secrets() {
        let tap = Tap::default();
        tap.capture(&json_batch([r#"{"a":1}"#]).as_ref());
        let (none, next) = tap.read(None, 10, Duration::ZERO);
        assert!(none.is_empty() && next.is_none(), "closed until read");
        tap.capture(
            &json_batch([r#"{"user":{"password":"hunter22","name":"x"},"token":"t0k3n","secrets":["a"]}"#, "password=hunter22"]).as_ref(),
        );
        let (seen, next) = tap.read(None, 10, Duration::ZERO);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].value, serde_json::json!({"user": {"password": "***", "name": "x"}, "token": "***", "secrets": "***"}));
        assert_eq!(seen[1].value, "(17 bytes, not JSON: not shown)");
        let (later, _) = tap.read(next, 10, Duration::from_millis(20));
        assert!(later.is_empty(), "nothing after the last one read");
    }

    #[test]
    fn a_reader_waits_for_the_next_record_and_the_ring_keeps_the_last() {
        let tap = std::sync::Arc::new(Tap::default());
        let _ = tap.read(None, 1, Duration::ZERO);
        let writer = {
            let tap = tap.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                tap.capture(&json_batch(["1"]).as_ref());
            })
        };
        let (seen, next) = tap.read(None, 10, Duration::from_secs(10));
        writer.join().unwrap();
        assert_eq!((seen.len(), next), (1, Some(seen[0].seq)), "woken by the record");
        for _ in 0..10 {
            tap.capture(&json_batch(["x"; 60]).as_ref());
        }
        let (kept, _) = tap.read(None, 1000, Duration::ZERO);
        assert_eq!(kept.len(), KEPT);
        assert!(kept.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
    }
}
