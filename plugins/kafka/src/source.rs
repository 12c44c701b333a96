//! The `kafka` source: a consumer group member that hands batches to the pipeline and
//! commits a partition's offset only once the pipeline acknowledged every record before
//! it. Under backpressure it pauses its partitions; on a rebalance it waits (bounded) for
//! the revoked partitions' records in flight and commits what they reached.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use weir_plugin::serde_json;
use weir_plugin::{BatchBuf, Context, EmitError, Emitter, Head, Outcome, PluginError, Source, StopFlag, Worker};

use crate::config::{describe, start_at_ms, SourceConfig, Start};
use crate::control::{self, Command, LagBoard, Member, Request};
use crate::offsets::{Tp, Tracker};

/// How long a rebalance or a stop waits for records in flight.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// How long a commit may go unconfirmed before its position is sent again.
const RESEND: Duration = Duration::from_secs(1);

/// Callbacks librdkafka makes on the consumer thread.
pub struct GroupContext {
    tracker: Arc<Tracker>,
    paused: Arc<AtomicBool>,
    start_at: Option<i64>,
    ctx: Context,
    /// The brokers, as the health reports name them.
    brokers: String,
    /// Whether the last health report said the brokers were down (an idle consumer then
    /// asks for metadata now and then, to report them up again).
    down: AtomicBool,
}

impl ClientContext for GroupContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure, Resolve};
        if matches!(error.rdkafka_error_code(), Some(AllBrokersDown | BrokerTransportFailure | Resolve)) {
            self.ctx.report_health("kafka", &self.brokers, false, &format!("{error}: {reason}"));
            self.down.store(true, Relaxed);
        }
        self.ctx.warn(&format!("Kafka consumer: {error}: {reason}"));
    }
}

fn tps(list: &TopicPartitionList) -> Vec<Tp> {
    list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

/// Commits every position the broker has not confirmed yet and waits for its answer.
fn commit_sync<C: ConsumerContext>(consumer: &BaseConsumer<C>, tracker: &Tracker) -> KafkaResult<()> {
    let ready = tracker.take_ready(Duration::ZERO);
    if ready.is_empty() {
        return Ok(());
    }
    consumer.commit(&commit_list(&ready), CommitMode::Sync)?;
    for (tp, offset) in &ready {
        tracker.confirm(tp, *offset);
    }
    Ok(())
}

fn commit_list(ready: &[(Tp, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in ready {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    tpl
}

impl GroupContext {
    /// For partitions the group has no offset for, seek to `start_at`.
    fn seek_to_start(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        let Some(ts) = self.start_at else { return };
        let Ok(committed) = consumer.committed_offsets(assigned.clone(), DRAIN_WAIT) else {
            return;
        };
        let mut wanted = TopicPartitionList::new();
        for e in committed.elements() {
            if matches!(e.offset(), Offset::Invalid) {
                let _ = wanted.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ts));
            }
        }
        if wanted.count() == 0 {
            return;
        }
        match consumer.offsets_for_times(wanted, DRAIN_WAIT) {
            Ok(found) => {
                for e in found.elements() {
                    let _ = consumer.seek(e.topic(), e.partition(), e.offset(), DRAIN_WAIT);
                }
            }
            Err(e) => self.ctx.warn(&format!("cannot look up offsets for start_at: {e}")),
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = tps(list);
            if !self.tracker.wait_idle(&revoked, DRAIN_WAIT) {
                self.ctx.warn("Partitions revoked with records still in flight; they will be delivered again by their next owner.");
            }
            if let Err(e) = commit_sync(consumer, &self.tracker) {
                self.ctx.warn(&format!("commit before revocation failed: {e}"));
            }
            for tp in &revoked {
                self.tracker.revoke(tp);
            }
        }
    }

    /// An asynchronous commit's answer: confirmed positions are not sent again; the others
    /// are, after [`RESEND`].
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.ctx.warn(&format!("Offset commit failed; it is sent again: {e}"));
            return;
        }
        for e in offsets.elements() {
            match (e.error(), e.offset()) {
                (Ok(()), Offset::Offset(o)) => self.tracker.confirm(&(e.topic().to_owned(), e.partition()), o),
                (Err(err), _) => {
                    self.ctx.warn(&format!("Offset commit for {}/{} failed; it is sent again: {err}", e.topic(), e.partition()))
                }
                _ => {}
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            for tp in tps(list) {
                self.tracker.assign(tp);
            }
            self.seek_to_start(consumer, list);
            if self.paused.load(Relaxed) {
                let _ = consumer.pause(list);
            }
            self.ctx.info(&format!("Assigned {} partition(s).", list.count()));
            self.ctx.report_health("kafka", &self.brokers, true, "");
            self.down.store(false, Relaxed);
        }
    }
}

/// The `kafka` source.
pub struct KafkaSource {
    config: SourceConfig,
    ctx: Context,
    consumer: Option<BaseConsumer<GroupContext>>,
    tracker: Arc<Tracker>,
    paused: Arc<AtomicBool>,
    worker: Option<Worker>,
    /// Where control requests go to the consumer thread.
    commands: Option<std::sync::mpsc::SyncSender<Command>>,
    /// The lag the consumer thread last measured.
    lag: LagBoard,
}

/// Where each record of a batch came from.
type Origins = Vec<(Tp, u64, i64)>;

struct Loop {
    consumer: BaseConsumer<GroupContext>,
    emitter: Emitter,
    ctx: Context,
    tracker: Arc<Tracker>,
    paused: Arc<AtomicBool>,
    stop: StopFlag,
    batch_size: usize,
    batch_wait: Duration,
    /// When the brokers were last asked for metadata while they were reported down.
    last_probe: std::cell::Cell<Instant>,
    /// Control requests from the host (offsets).
    commands: std::sync::mpsc::Receiver<Command>,
    /// Where the lag is put, every [`LAG_EVERY`].
    lag: LagBoard,
    last_lag: std::cell::Cell<Option<Instant>>,
    /// The literal topic names, the group and where the source starts without offsets.
    topics: Vec<String>,
    group: String,
    start_at: Option<i64>,
    start_latest: bool,
}

/// How often the lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// How often an idle consumer whose brokers were reported down asks them again.
const PROBE_EVERY: Duration = Duration::from_secs(5);

impl Loop {
    /// Sends the commit positions that moved or are still unconfirmed; the broker answers
    /// through [`GroupContext::commit_callback`].
    fn commit_ready(&self) {
        let ready = self.tracker.take_ready(RESEND);
        if !ready.is_empty() {
            if let Err(e) = self.consumer.commit(&commit_list(&ready), CommitMode::Async) {
                self.ctx.warn(&format!("offset commit failed: {e}"));
            }
        }
    }

    /// Polls up to `batch_size` messages or until `batch_wait` passes.
    fn fill(&self) -> Option<(BatchBuf, Origins)> {
        let mut batch = BatchBuf::new();
        let mut origins = Origins::new();
        let deadline = Instant::now() + self.batch_wait;
        while batch.len() < self.batch_size && !self.stop.is_set() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && !batch.is_empty() {
                break;
            }
            match self.consumer.poll(left.max(Duration::from_millis(1))) {
                Some(Ok(m)) => {
                    // Read once: each call checks the name is UTF-8 again.
                    let topic = m.topic();
                    let tp: Tp = (topic.to_owned(), m.partition());
                    let offset = m.offset();
                    let (p, o) = (m.partition().to_string(), offset.to_string());
                    let mut extra: Vec<(&str, &[u8])> =
                        vec![("kafka.topic", topic.as_bytes()), ("kafka.partition", p.as_bytes()), ("kafka.offset", o.as_bytes())];
                    if let Some(h) = m.headers() {
                        for header in h.iter() {
                            extra.push((header.key, header.value.unwrap_or_default()));
                        }
                    }
                    let head = Head { key: m.key(), headers_raw: &[], extra_headers: &extra, timestamp_ms: m.timestamp().to_millis() };
                    batch.push(batch.len() as u32, head, m.payload().unwrap_or_default());
                    let epoch = self.tracker.epoch(&tp);
                    origins.push((tp, epoch, offset));
                }
                Some(Err(e)) => {
                    self.ctx.warn(&format!("Kafka consumer: {e}"));
                    if batch.is_empty() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    break;
                }
                None => {
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        let group = self.consumer.context();
        if !batch.is_empty() {
            group.down.store(false, Relaxed);
            self.ctx.report_health("kafka", &group.brokers, true, "");
        } else if group.down.load(Relaxed) && self.last_probe.get().elapsed() >= PROBE_EVERY {
            // Idle since the brokers were lost: ask them, so health can say they are back.
            self.last_probe.set(Instant::now());
            if self.consumer.fetch_metadata(None, Duration::from_secs(2)).is_ok() {
                group.down.store(false, Relaxed);
                self.ctx.report_health("kafka", &group.brokers, true, "");
            }
        }
        (!batch.is_empty()).then_some((batch, origins))
    }

    /// Drops the records whose partition was revoked since they were read (by a rebalance
    /// served while the batch was filled or waited for room): whoever owns the partition
    /// now reads them again from its committed offset. Without this a record read in an
    /// older assignment would be tracked in the new one, where its acknowledgement (of the
    /// older epoch) is ignored, and its partition's commit position would never move again.
    fn fresh(&self, batch: BatchBuf, origins: Arc<Origins>) -> Option<(BatchBuf, Arc<Origins>)> {
        let keep = self.tracker.current(origins.iter().map(|(tp, epoch, _)| (tp, *epoch)));
        if keep.iter().all(|&k| k) {
            return Some((batch, origins));
        }
        let (view, mut kept, mut kept_origins) = (batch.as_ref(), BatchBuf::new(), Origins::new());
        for (i, origin) in origins.iter().cloned().enumerate().filter(|(i, _)| keep[*i]) {
            kept.push_record(kept.len() as u32, &view.get(i));
            kept_origins.push(origin);
        }
        (!kept.is_empty()).then_some((kept, Arc::new(kept_origins)))
    }

    /// Hands the batch to the pipeline. Its records count as in flight (what a revocation
    /// waits for) only once the pipeline took them, never while this thread holds them.
    fn offer(&self, batch: &BatchBuf, origins: &Arc<Origins>) -> Result<(), EmitError> {
        self.tracker.track_all(origins.iter().map(|(tp, _, offset)| (tp, *offset)));
        let (tracker, ctx, taken) = (self.tracker.clone(), self.ctx, origins.clone());
        let result = self.emitter.emit(&batch.as_ref(), move |ack| {
            let settled = ack.outcomes.iter().zip(taken.iter()).map(|(o, (tp, epoch, offset))| {
                let (topic, partition) = tp;
                let handled = match o {
                    Outcome::Failed(reason) => {
                        ctx.warn(&format!("Record {topic}/{partition}@{offset} failed; its offset is not committed: {reason}"));
                        false
                    }
                    Outcome::Rejected(reason) => {
                        ctx.warn(&format!("Record {topic}/{partition}@{offset} rejected: {reason}"));
                        true
                    }
                    _ => true,
                };
                (tp, *epoch, *offset, handled)
            });
            tracker.done_all(settled);
        });
        if result.is_err() {
            self.tracker.untrack_all(origins.iter().rev().map(|(tp, _, offset)| (tp, *offset)));
        }
        result
    }

    fn set_paused(&self, pause: bool) {
        if self.paused.swap(pause, Relaxed) == pause {
            return;
        }
        if let Ok(assignment) = self.consumer.assignment() {
            let r = if pause { self.consumer.pause(&assignment) } else { self.consumer.resume(&assignment) };
            if let Err(e) = r {
                self.ctx.warn(&format!("cannot {} partitions: {e}", if pause { "pause" } else { "resume" }));
            }
        }
    }

    fn member(&self) -> Member<'_> {
        Member {
            consumer: &self.consumer,
            tracker: &self.tracker,
            topics: &self.topics,
            group: &self.group,
            start_at: self.start_at,
            start_latest: self.start_latest,
        }
    }

    /// Carries out the control requests waiting; true when one moved the offsets (the
    /// records held from the old positions are then dropped).
    fn serve_requests(&self) -> bool {
        let mut moved = false;
        while let Ok((request, answer)) = self.commands.try_recv() {
            let result = match &request {
                Request::Offsets => self.member().offsets(),
                Request::Alter(target) => self.member().alter(Some(target)),
                Request::Reset => self.member().alter(None),
                Request::Lag => Ok(control::lag_json(&self.lag)),
            };
            if result.is_ok() && matches!(request, Request::Alter(_) | Request::Reset) {
                self.ctx.info(&format!("Offsets moved by an operator: {}", result.as_ref().map(|v| v.to_string()).unwrap_or_default()));
                moved = true;
            }
            let _ = answer.send(result);
        }
        if self.last_lag.get().is_none_or(|at| at.elapsed() >= LAG_EVERY) {
            self.last_lag.set(Some(Instant::now()));
            self.member().measure_lag(&self.lag);
        }
        moved
    }

    fn run(self) {
        // The batch being offered, and its records' origins, shared with its acknowledgement.
        let mut held: Option<(BatchBuf, Arc<Origins>)> = None;
        let mut pause = Duration::from_millis(1);
        while !self.stop.is_set() {
            if self.serve_requests() {
                // Read again from the new positions (the pipeline pushes back again if it
                // is still paused).
                held = None;
                self.set_paused(false);
            }
            self.commit_ready();
            // A batch just read is checked too: a rebalance served by one of the polls
            // that filled it may have taken partitions of its first records.
            held = held
                .take()
                .or_else(|| self.fill().map(|(batch, origins)| (batch, Arc::new(origins))))
                .and_then(|(batch, origins)| self.fresh(batch, origins));
            let Some((batch, origins)) = &held else { continue };
            match self.offer(batch, origins) {
                Ok(()) => {
                    held = None;
                    pause = Duration::from_millis(1);
                    self.set_paused(false);
                }
                Err(EmitError::Full) => {
                    self.set_paused(true);
                    // Serve the group (heartbeats, rebalances) while paused.
                    if let Some(Ok(m)) = self.consumer.poll(pause) {
                        // Not taken: rewind so it is read again after resuming.
                        let (topic, partition, offset) = (m.topic().to_owned(), m.partition(), m.offset());
                        drop(m);
                        if let Err(e) = self.consumer.seek(&topic, partition, Offset::Offset(offset), DRAIN_WAIT) {
                            self.ctx.warn(&format!("cannot rewind {topic}/{partition} to {offset}: {e}"));
                        }
                    }
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => {
                    self.ctx.warn(&format!("The pipeline stopped taking records: {e}"));
                    break;
                }
            }
        }
        // Commit what the pipeline finished; records still in flight are read again later.
        let deadline = Instant::now() + DRAIN_WAIT;
        while self.tracker.in_flight() > 0 && Instant::now() < deadline {
            self.commit_ready();
            let _ = self.consumer.poll(Duration::from_millis(20));
        }
        if let Err(e) = commit_sync(&self.consumer, &self.tracker) {
            self.ctx.warn(&format!("final offset commit failed: {e}"));
        }
        self.consumer.unsubscribe();
    }
}

impl Source for KafkaSource {
    type Config = SourceConfig;
    const NAME: &'static str = "kafka";
    const DESCRIPTION: &'static str = "Consumes Kafka topics in a group; commits offsets only after every sink has the records.";

    fn validate(config: &SourceConfig) -> Result<(), PluginError> {
        config.check()
    }

    const CONTROLS: bool = true;

    fn control(&mut self, request: &serde_json::Value) -> Result<serde_json::Value, PluginError> {
        let request = control::parse(request)?;
        if let Request::Lag = request {
            return Ok(control::lag_json(&self.lag));
        }
        let gone = || PluginError::fatal("the source's consumer has stopped");
        let commands = self.commands.as_ref().ok_or_else(|| PluginError::config("the source is not started"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        commands.send((request, tx)).map_err(|_| gone())?;
        match rx.recv_timeout(control::ANSWER_WAIT) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(PluginError::retry(format!("the consumer did not take the request within {} s", control::ANSWER_WAIT.as_secs())))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }

    fn create(config: SourceConfig, ctx: Context) -> Result<Self, PluginError> {
        let tracker = Arc::new(Tracker::default());
        let paused = Arc::new(AtomicBool::new(false));
        let start_at = config.start_at.as_deref().map(start_at_ms).transpose()?;
        let client = config.client();
        ctx.log(weir_plugin::Level::Debug, &format!("Kafka consumer settings: {}", describe(&client)));
        let group = GroupContext {
            tracker: tracker.clone(),
            paused: paused.clone(),
            start_at,
            ctx,
            brokers: config.brokers.clone(),
            down: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<GroupContext> =
            client.create_with_context(group).map_err(|e| PluginError::config(format!("cannot create the Kafka consumer: {e}")))?;
        let topics = topic_names(&config.topics);
        consumer.subscribe(&topics).map_err(|e| PluginError::config(format!("cannot subscribe to {topics:?}: {e}")))?;
        Ok(KafkaSource { config, ctx, consumer: Some(consumer), tracker, paused, worker: None, commands: None, lag: LagBoard::default() })
    }

    fn start(&mut self, emitter: Emitter) -> Result<(), PluginError> {
        let consumer = self.consumer.take().ok_or_else(|| PluginError::fatal("the source was already started"))?;
        let (ctx, tracker, paused) = (self.ctx, self.tracker.clone(), self.paused.clone());
        let (batch_size, batch_wait) = (self.config.batch_size.get(), Duration::from_millis(self.config.batch_wait_ms));
        self.ctx.info(&format!("Consuming {:?} as group {}.", self.config.topics, self.config.group_id));
        let (tx, commands) = std::sync::mpsc::sync_channel(4);
        self.commands = Some(tx);
        let topics = topic_names(&self.config.topics).into_iter().filter(|t| !t.starts_with('^')).map(str::to_owned).collect();
        let (group, lag) = (self.config.group_id.clone(), self.lag.clone());
        let start_at = consumer.context().start_at;
        let start_latest = self.config.start == Start::Latest;
        self.worker = Some(Worker::spawn("weir-kafka-source", move |stop| {
            Loop {
                consumer,
                emitter,
                ctx,
                tracker,
                paused,
                stop,
                batch_size,
                batch_wait,
                last_probe: std::cell::Cell::new(Instant::now()),
                commands,
                lag,
                last_lag: std::cell::Cell::new(None),
                topics,
                group,
                start_at,
                start_latest,
            }
            .run()
        })?);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), PluginError> {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        Ok(())
    }
}

/// The topics to subscribe to: a regular expression (`^…`) is one entry; a list of names
/// may be one comma-separated entry.
fn topic_names(topics: &[String]) -> Vec<&str> {
    topics
        .iter()
        .flat_map(|t| if t.starts_with('^') { vec![t.as_str()] } else { t.split(',').collect() })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}
