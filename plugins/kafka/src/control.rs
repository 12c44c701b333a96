//! Operators' requests to a running `kafka` source (ABI minor 6, `Source::control`), in
//! the spirit of Kafka Connect's offsets API: read the group's offsets and lag, move them,
//! reset them. Requests are carried out by the consumer thread, which is the group member:
//! a group with a live member takes commits only from that member, so moving offsets from
//! outside would need every member gone.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use weir_plugin::serde_json::{self, json, Value};
use weir_plugin::PluginError;

use crate::offsets::{Tp, Tracker};
use crate::source::GroupContext;

/// How long one request to the brokers may take.
const BROKER_WAIT: Duration = Duration::from_secs(5);
/// How long a request waits for the consumer thread to take it up.
pub const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// A request, as the host sends it (`{"op": …}` and the operator's body).
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Committed offset, watermarks and lag per partition.
    Offsets,
    /// Moves the committed offsets (the source must be paused).
    Alter(Target),
    /// Moves them to where the source starts without committed offsets: `start_at`, else
    /// `start` (the source must be paused).
    Reset,
    /// The last lag figures the consumer thread took, without asking the brokers.
    Lag,
}

/// Where [`Request::Alter`] moves the offsets: exactly one of the three.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `earliest` or `latest`, for every assigned partition.
    #[serde(default)]
    to: Option<String>,
    /// The first record at or after this time (RFC 3339, or milliseconds since the epoch),
    /// for every assigned partition; the end of a partition with no such record.
    #[serde(default)]
    timestamp: Option<Value>,
    /// Explicit offsets.
    #[serde(default)]
    offsets: Option<Vec<Position>>,
}

/// One partition's new offset.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    topic: String,
    partition: i32,
    offset: i64,
}

/// One partition's lag as last measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// The last lag figures, shared between the consumer thread and `control`.
pub type LagBoard = Arc<Mutex<Vec<Lag>>>;

/// A request on its way to the consumer thread, with where its answer goes.
pub type Command = (Request, mpsc::SyncSender<Result<Value, PluginError>>);

/// Reads a request; the error says what is wrong with it.
pub fn parse(request: &Value) -> Result<Request, PluginError> {
    serde_json::from_value(request.clone()).map_err(|e| {
        PluginError::config(format!(
            "{e}; a body is one of {{\"to\": \"earliest\"|\"latest\"}}, {{\"timestamp\": \"2024-01-01T00:00:00Z\"}}, {{\"offsets\": [{{\"topic\", \"partition\", \"offset\"}}]}}"
        ))
    })
}

/// The lag board as JSON, with the total.
pub fn lag_json(board: &LagBoard) -> Value {
    let lags = board.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let total: i64 = lags.iter().map(|l| l.lag).sum();
    json!({
        "total": total,
        "partitions": lags.iter().map(|l| json!({"topic": l.topic, "partition": l.partition, "lag": l.lag})).collect::<Vec<_>>(),
    })
}

/// What the consumer thread needs to carry out requests.
pub struct Member<'a> {
    pub consumer: &'a BaseConsumer<GroupContext>,
    pub tracker: &'a Tracker,
    /// Literal topic names subscribed to (regular expressions are known by their assignment).
    pub topics: &'a [String],
    pub group: &'a str,
    /// Where the source starts without committed offsets: `start_at` (ms), else latest or earliest.
    pub start_at: Option<i64>,
    pub start_latest: bool,
}

fn retry(what: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::retry(format!("{what}: {e}"))
}

impl Member<'_> {
    fn assignment(&self) -> Result<Vec<Tp>, PluginError> {
        let list = self.consumer.assignment().map_err(|e| retry("cannot read the assignment", e))?;
        Ok(list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect())
    }

    fn watermarks(&self, (topic, partition): &Tp) -> Result<(i64, i64), PluginError> {
        self.consumer
            .fetch_watermarks(topic, *partition, BROKER_WAIT)
            .map_err(|e| retry(&format!("cannot read the watermarks of {topic}/{partition}"), e))
    }

    /// The group's committed offset, watermarks and lag of every partition of the literal
    /// topics and of every partition assigned to this member.
    pub fn offsets(&self) -> Result<Value, PluginError> {
        let assigned = self.assignment()?;
        let mut all: Vec<Tp> = assigned.clone();
        for topic in self.topics {
            let meta = self.consumer.fetch_metadata(Some(topic), BROKER_WAIT).map_err(|e| retry("cannot read the topics' metadata", e))?;
            for t in meta.topics() {
                all.extend(t.partitions().iter().map(|p| (t.name().to_owned(), p.id())));
            }
        }
        all.sort();
        all.dedup();
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &all {
            tpl.add_partition(topic, *partition);
        }
        let committed = self.consumer.committed_offsets(tpl, BROKER_WAIT).map_err(|e| retry("cannot read the committed offsets", e))?;
        let committed: BTreeMap<Tp, Option<i64>> = committed
            .elements()
            .iter()
            .map(|e| ((e.topic().to_owned(), e.partition()), if let Offset::Offset(o) = e.offset() { Some(o) } else { None }))
            .collect();
        let mut partitions = Vec::new();
        let mut total = 0;
        for tp in &all {
            let (low, high) = self.watermarks(tp)?;
            let done = committed.get(tp).copied().flatten();
            let lag = done.map(|c| (high - c).max(0));
            total += lag.unwrap_or(high - low);
            partitions.push(json!({
                "topic": tp.0, "partition": tp.1, "committed": done,
                "low_watermark": low, "high_watermark": high, "lag": lag,
                "assigned": assigned.contains(tp),
            }));
        }
        Ok(json!({ "group": self.group, "lag": total, "partitions": partitions }))
    }

    /// Moves the committed offsets of assigned partitions to `target` (the records at the
    /// old positions that are read and not yet handed on are dropped: they are read again
    /// from the new position, or skipped). Every record handed on must be settled first.
    pub fn alter(&self, target: Option<&Target>) -> Result<Value, PluginError> {
        let assigned = self.assignment()?;
        if assigned.is_empty() {
            return Err(PluginError::retry("no partition is assigned to the source yet (it is joining its group); try again"));
        }
        if !self.tracker.wait_idle(&assigned, Duration::from_secs(10)) {
            return Err(PluginError::retry("records handed to the pipeline are not settled yet (a sink is retrying); try again"));
        }
        let wanted = match target {
            Some(t) => self.wanted(t, &assigned)?,
            None => self.start_positions(&assigned)?,
        };
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &wanted {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|e| PluginError::config(format!("offset {offset} of {topic}/{partition}: {e}")))?;
        }
        for ((topic, partition), offset) in &wanted {
            // A new epoch: late acknowledgements of the old position are ignored.
            self.tracker.assign((topic.clone(), *partition));
            self.consumer
                .seek(topic, *partition, Offset::Offset(*offset), BROKER_WAIT)
                .map_err(|e| retry(&format!("cannot move {topic}/{partition} to {offset}"), e))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync).map_err(|e| retry("the brokers did not take the new offsets", e))?;
        for (tp, offset) in &wanted {
            self.tracker.confirm(tp, *offset);
        }
        Ok(json!({
            "group": self.group,
            "moved": wanted.iter().map(|((t, p), o)| json!({"topic": t, "partition": p, "offset": o})).collect::<Vec<_>>(),
        }))
    }

    fn wanted(&self, target: &Target, assigned: &[Tp]) -> Result<Vec<(Tp, i64)>, PluginError> {
        match (&target.to, &target.timestamp, &target.offsets) {
            (Some(to), None, None) => match to.as_str() {
                "earliest" => assigned.iter().map(|tp| Ok((tp.clone(), self.watermarks(tp)?.0))).collect(),
                "latest" => assigned.iter().map(|tp| Ok((tp.clone(), self.watermarks(tp)?.1))).collect(),
                other => Err(PluginError::config(format!("\"to\": {other:?} is neither \"earliest\" nor \"latest\""))),
            },
            (None, Some(ts), None) => self.at_time(timestamp_ms(ts)?, assigned),
            (None, None, Some(list)) => {
                let mut wanted = Vec::new();
                for p in list {
                    let tp = (p.topic.clone(), p.partition);
                    if !assigned.contains(&tp) {
                        return Err(PluginError::config(format!(
                            "{}/{} is not assigned to this source (assigned: {}); another member of group {} owns it, or it does not exist",
                            p.topic,
                            p.partition,
                            names(assigned),
                            self.group
                        )));
                    }
                    let (low, high) = self.watermarks(&tp)?;
                    if p.offset < low || p.offset > high {
                        return Err(PluginError::config(format!(
                            "offset {} of {}/{} is outside the partition's records ({low} to {high})",
                            p.offset, p.topic, p.partition
                        )));
                    }
                    wanted.push((tp, p.offset));
                }
                Ok(wanted)
            }
            _ => Err(PluginError::config(
                "give exactly one of \"to\" (\"earliest\" or \"latest\"), \"timestamp\" (RFC 3339 or ms) and \"offsets\" ([{\"topic\", \"partition\", \"offset\"}])",
            )),
        }
    }

    /// Where the source starts without committed offsets.
    fn start_positions(&self, assigned: &[Tp]) -> Result<Vec<(Tp, i64)>, PluginError> {
        match self.start_at {
            Some(ms) => self.at_time(ms, assigned),
            None => assigned
                .iter()
                .map(|tp| {
                    let (low, high) = self.watermarks(tp)?;
                    Ok((tp.clone(), if self.start_latest { high } else { low }))
                })
                .collect(),
        }
    }

    /// The first offset at or after `ms` in each partition (its end when there is none).
    fn at_time(&self, ms: i64, assigned: &[Tp]) -> Result<Vec<(Tp, i64)>, PluginError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in assigned {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(ms));
        }
        let found = self.consumer.offsets_for_times(tpl, BROKER_WAIT).map_err(|e| retry("cannot look up offsets by time", e))?;
        found
            .elements()
            .iter()
            .map(|e| {
                let tp = (e.topic().to_owned(), e.partition());
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => self.watermarks(&tp)?.1,
                };
                Ok((tp, offset))
            })
            .collect()
    }

    /// Measures each assigned partition's lag: its high watermark less the position the
    /// pipeline settled (the committed one until it settled something).
    pub fn measure_lag(&self, board: &LagBoard) {
        let Ok(assigned) = self.assignment() else { return };
        let mut lags = Vec::new();
        let settled = self.tracker.positions(&assigned);
        let unknown: Vec<&Tp> = assigned.iter().filter(|tp| !settled.contains_key(*tp)).collect();
        let mut committed = BTreeMap::new();
        if !unknown.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition) in &unknown {
                tpl.add_partition(topic, *partition);
            }
            if let Ok(c) = self.consumer.committed_offsets(tpl, Duration::from_secs(1)) {
                for e in c.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        committed.insert((e.topic().to_owned(), e.partition()), o);
                    }
                }
            }
        }
        for tp in &assigned {
            let Ok((low, high)) = self.consumer.fetch_watermarks(&tp.0, tp.1, Duration::from_secs(1)) else { continue };
            let done = settled.get(tp).or(committed.get(tp)).copied().unwrap_or(low);
            lags.push(Lag { topic: tp.0.clone(), partition: tp.1, lag: (high - done).max(0) });
        }
        *board.lock().unwrap_or_else(|p| p.into_inner()) = lags;
    }
}

fn names(tps: &[Tp]) -> String {
    tps.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>().join(", ")
}

/// A time as milliseconds since the epoch: a number, or RFC 3339 text.
fn timestamp_ms(value: &Value) -> Result<i64, PluginError> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .filter(|ms| *ms >= 0)
            .ok_or_else(|| PluginError::config(format!("\"timestamp\": {n} is not milliseconds since 1970"))),
        Value::String(s) => crate::config::start_at_ms(s).map_err(|e| PluginError::config(e.to_string().replace("start_at", "timestamp"))),
        other => Err(PluginError::config(format!("\"timestamp\": {other} is neither RFC 3339 text nor milliseconds"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_and_bad_ones_say_what_is_expected() {
        assert!(matches!(parse(&json!({"op": "offsets"})).unwrap(), Request::Offsets));
        let Request::Alter(t) = parse(&json!({"op": "alter", "to": "earliest"})).unwrap() else { panic!() };
        assert_eq!(t.to.as_deref(), Some("earliest"));
        let e = parse(&json!({"op": "alter", "offset": 3})).unwrap_err().to_string();
        assert!(e.contains("unknown field `offset`") && e.contains("\"timestamp\""), "{e}");
        assert_eq!(timestamp_ms(&json!("1970-01-01T00:00:01Z")).unwrap(), 1000);
        assert_eq!(timestamp_ms(&json!(42)).unwrap(), 42);
        assert!(timestamp_ms(&json!("yesterday")).unwrap_err().to_string().contains("timestamp \"yesterday\""));
        assert!(timestamp_ms(&json!(-1)).is_err());
    }

    #[test]
    fn the_lag_board_sums_its_partitions() {
        let board = LagBoard::default();
        *board.lock().unwrap() = vec![Lag { topic: "t".into(), partition: 0, lag: 3 }, Lag { topic: "t".into(), partition: 1, lag: 4 }];
        assert_eq!(lag_json(&board)["total"], 7);
        assert_eq!(lag_json(&board)["partitions"][1]["lag"], 4);
    }
}
