//! The transform chain on worker threads. Each worker has its own instances of the
//! pipeline's transforms; workers take batches from the source's queue in turn, numbering
//! them as they take them, run them through the chain at the same time, and hand them to
//! the sinks in that order (a batch done early waits for the ones before it), so sinks,
//! acknowledgements and dead letters see batches in source order as with one thread.
//!
//! State a transform shares across its instances is the plugin's to keep consistent:
//! `dedupe` keeps one window per pipeline stage in the library, locked per batch, in which
//! a key carried by a batch still on its way counts as a duplicate, so two workers never
//! both pass one key. A transform whose outcome depends on which record came first asks
//! for source order (`PLUGIN_IN_ORDER`, as `dedupe` does, so the first copy of a key is
//! the one passed): workers then take turns at that stage in batch order, while the stages
//! before it run in parallel.

use std::collections::BTreeMap;

use super::*;

/// What every worker of a pipeline shares.
pub(super) struct Heads {
    pub(super) pipeline: String,
    pub(super) source: String,
    pub(super) source_plugin: String,
    pub(super) total_sinks: usize,
    pub(super) ack_mode: Acknowledge,
    pub(super) dead_letters: Option<DeadLetters>,
    pub(super) abandon: Arc<AtomicBool>,
    /// The sinks that take batches from the transforms (not those after another sink).
    pub(super) sinks: Vec<(SinkQueue, Arc<Buffer>)>,
    pub(super) source_metrics: Arc<StageMetrics>,
    /// How many sinks run `after` each of `sinks`.
    pub(super) followers: Vec<usize>,
    /// Which of `sinks` take which records, when some have a `when` condition.
    pub(super) routes: Option<super::route::Routes>,
}

/// The source's queue, and the batches done out of turn.
pub(super) struct Order {
    /// The queue and the number the next batch taken from it gets.
    queue: Mutex<(Receiver<Envelope>, u64)>,
    /// The number of the next batch to hand to the sinks, and the batches waiting for it.
    done: Mutex<(u64, BTreeMap<u64, Processed>)>,
    /// Workers still running: the last one to stop finishes the sinks' disk buffers.
    running: AtomicUsize,
    /// Per transform of the chain, the number of the batch whose turn it is there: a stage
    /// that asked for source order (`PLUGIN_IN_ORDER`) takes batches only in turn.
    turns: Vec<(Mutex<u64>, Condvar)>,
}

/// Batch `number`'s turn at one stage; the next batch's when dropped.
struct Turn<'a> {
    at: &'a (Mutex<u64>, Condvar),
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.at.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.at.1.notify_all();
    }
}

impl Order {
    pub(super) fn new(queue: Receiver<Envelope>, workers: usize, transforms: usize) -> Arc<Order> {
        Arc::new(Order {
            queue: Mutex::new((queue, 0)),
            done: Mutex::new((0, BTreeMap::new())),
            running: AtomicUsize::new(workers),
            turns: (0..transforms).map(|_| (Mutex::new(0), Condvar::new())).collect(),
        })
    }

    /// Waits until it is batch `number`'s turn at transform `index`. Every batch taken is
    /// on a worker that gets there (one whose records are all gone passes its turn on), and
    /// batches are numbered as they are taken, so the wait always ends.
    fn turn(&self, index: usize, number: u64) -> Turn<'_> {
        let at = &self.turns[index];
        let mut turn = at.0.lock().unwrap_or_else(|p| p.into_inner());
        while *turn != number {
            turn = at.1.wait(turn).unwrap_or_else(|p| p.into_inner());
        }
        Turn { at }
    }

    /// The next batch and its number; `None` once the source's queue is closed and empty.
    fn take(&self) -> Option<(u64, Envelope)> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let envelope = q.0.recv().ok()?;
        let n = q.1;
        q.1 += 1;
        Some((n, envelope))
    }

    /// Puts batch `n` back in turn and hands every batch now in turn to the sinks (holding
    /// the turn meanwhile, so a sink that pushes back holds the other workers back too).
    fn put(&self, n: u64, batch: Processed, heads: &Heads) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        done.1.insert(n, batch);
        loop {
            let next = done.0;
            let Some(batch) = done.1.remove(&next) else { break };
            done.0 += 1;
            hand_to_sinks(batch, heads);
        }
    }
}

/// A batch through the chain, not yet handed to the sinks.
struct Processed {
    outcomes: Outcomes,
    /// The source's index of each record left.
    origins: Vec<u32>,
    letters: Letters,
    current: Current,
    awaiting: Vec<Part>,
    ack: AckGuard,
    received: Instant,
    trace: Option<SpanContext>,
    /// Which records each sink takes, when sinks have conditions.
    taken: Option<super::route::Taken>,
}

/// One worker: runs batches through its own instances of the transforms until the source's
/// queue closes.
pub(super) fn run_worker(mut transforms: Vec<Stage>, order: Arc<Order>, heads: Arc<Heads>) {
    let tracer = telemetry::tracer();
    // Transforms that asked (ABI minor 1) hear what became of each batch they processed.
    let acknowledging: Vec<bool> = transforms.iter().map(|t| t.plugin.descriptor.acknowledge.is_some()).collect();
    // Declared conditions that end the chain are evaluated with the routing, each record
    // read once for them and the sinks' `when` (not with traces on: each stage has a span).
    let gated_from = match (&heads.routes, tracer) {
        (Some(_), None) => transforms.iter().rposition(|t| t.declared.is_none() || t.in_order).map_or(0, |last| last + 1),
        _ => transforms.len(),
    };
    let gates = heads.routes.as_ref().map(|routes| route::Gates::new(routes, &transforms[gated_from..]));
    while let Some((number, Envelope { batch, ack, received })) = order.take() {
        heads.source_metrics.queue_depth.fetch_sub(1, Relaxed);
        heads.source_metrics.tap.capture(&batch.as_ref());
        let n = batch.len();
        // The source's span covers the batch from its emission to the transforms taking it.
        let mut trace = tracer.map(|t| {
            let now = SystemTime::now();
            let (parent, links) = telemetry::batch_parent(&batch.as_ref());
            let site = SpanSite { pipeline: &heads.pipeline, stage: &heads.source, plugin: &heads.source_plugin, kind: "source" };
            let span = t.start(&site, parent.as_ref(), links, n, now.checked_sub(received.elapsed()).unwrap_or(now));
            let cx = span.context();
            span.end_at(now);
            cx
        });
        let mut outcomes = Outcomes::new(n);
        let mut origins: Vec<u32> = (0..n as u32).collect();
        let mut letters = Letters::default();
        let keep_letters = heads.dead_letters.is_some();
        let mut current = Current::Host(batch);
        let mut awaiting = Vec::new();
        for (index, stage) in transforms.iter_mut().enumerate().take(gated_from) {
            // Held to the end of this stage's work on the batch.
            let _turn = stage.in_order.then(|| order.turn(index, number));
            if origins.is_empty() {
                continue;
            }
            let input = current.view();
            stage.metrics.records_in.fetch_add(input.len() as u64, Relaxed);
            stage.metrics.batches.fetch_add(1, Relaxed);
            let mut span = tracer.zip(trace.as_ref()).map(|(t, parent)| {
                let site = SpanSite { pipeline: &heads.pipeline, stage: &stage.name, plugin: &stage.plugin.name, kind: "transform" };
                t.start(&site, Some(parent), Vec::new(), input.len(), SystemTime::now())
            });
            let started = Instant::now();
            // A condition the plugin declared is evaluated here; any other stage is called.
            let result = match &stage.declared {
                Some(declared) => Ok(Worked::Host(declared.run(&input))),
                None => stage.process(&input).and_then(|(out, generation)| {
                    let out_origins = out.origins().map_err(|m| CallError::host(format!("bad output: {m}")))?.to_vec();
                    if !out.kept() {
                        out.batch().map_err(|e| CallError::host(format!("bad output: {e}")))?;
                    }
                    Ok(Worked::Plugin(out, out_origins, generation))
                }),
            };
            stage.metrics.latency.observe(started.elapsed());
            match result {
                Ok(worked) => {
                    // The records passed on, those rejected, the batch's number for
                    // `acknowledge`, and the plugin's output unless it kept its input's bytes.
                    let (out_origins, rejections, sequence, output) = match worked {
                        Worked::Plugin(out, out_origins, generation) => {
                            let (rejections, sequence) = (out.rejections(), out.sequence().map(|s| (s, generation)));
                            (out_origins, rejections, sequence, (!out.kept()).then_some(out))
                        }
                        Worked::Host((kept, rejected)) => (kept, rejected, None, None),
                    };
                    let mut kept = vec![false; input.len()];
                    for &o in &out_origins {
                        kept[o as usize] = true;
                    }
                    let rejected = rejections.len();
                    stage.metrics.rejected.fetch_add(rejected as u64, Relaxed);
                    for (i, reason) in rejections {
                        if keep_letters {
                            letters.add(&input.get(i), origins[i], &stage.name, "rejected", &reason);
                        }
                        outcomes.set(origins[i], outcome::REJECTED, Some(Refusal::by(&stage.name, reason)));
                        kept[i] = true;
                    }
                    let dropped = kept.iter().filter(|k| !**k).count();
                    stage.metrics.dropped.fetch_add(dropped as u64, Relaxed);
                    for (i, k) in kept.iter().enumerate() {
                        if !k {
                            outcomes.set(origins[i], outcome::DROPPED, None);
                        }
                    }
                    stage.metrics.records_out.fetch_add(out_origins.len() as u64, Relaxed);
                    if let Some(span) = span.as_mut() {
                        span.count("weir.records.rejected", rejected);
                        span.count("weir.records.dropped", dropped);
                    }
                    if let Some((sequence, generation)) = sequence.filter(|_| acknowledging[index]) {
                        awaiting.push(Part {
                            stage: stage.name.clone(),
                            slot: stage.slot.clone(),
                            generation,
                            sequence,
                            origins: origins.clone(),
                        });
                    }
                    origins = out_origins.iter().map(|&o| origins[o as usize]).collect();
                    current = match output {
                        Some(out) => Current::Plugin(out),
                        None => current.keep(&out_origins),
                    };
                    stage.metrics.tap.capture(&current.view());
                    stage.succeeded();
                }
                Err(e) => {
                    let (poisoned, message) = (e.poisoned(), e.to_string());
                    stage.metrics.errors.fetch_add(1, Relaxed);
                    tracing::error!(stage = %stage.name, plugin = %stage.plugin.name, error = %message, records = origins.len(), "Transform failed; its batch is failed.");
                    if poisoned {
                        stage.poison();
                    }
                    stage.failed(&message);
                    if let Some(span) = span.as_mut() {
                        span.fail(&message);
                    }
                    let reason = Refusal::by(&stage.name, message.as_str());
                    for (i, &o) in origins.iter().enumerate() {
                        if keep_letters {
                            letters.add(&input.get(i), o, &stage.name, "failed", &message);
                        }
                        outcomes.set(o, outcome::FAILED, Some(reason.clone()));
                    }
                    origins.clear();
                }
            }
            if let Some(span) = span {
                trace = Some(span.context());
                span.end();
            }
        }
        let taken = heads.routes.as_ref().filter(|_| !origins.is_empty()).map(|routes| {
            let letters = if keep_letters { Some(&mut letters) } else { None };
            routes.route(&current.view(), &origins, &mut outcomes, letters, gates.as_ref().expect("made with the routes"))
        });
        order.put(number, Processed { outcomes, origins, letters, current, awaiting, ack, received, trace, taken }, &heads);
    }
    if order.running.fetch_sub(1, Relaxed) == 1 {
        // No more batches: disk-buffered sinks deliver what is on disk (or hand it to the
        // next version of the pipeline), then stop.
        for (_, buffer) in &heads.sinks {
            buffer.finish_writing();
        }
    }
}

/// What a transform stage made of a batch: the plugin's output (with the records it passed
/// on and the instance's generation), or the host's verdicts on a declared condition (the
/// records kept, and those rejected with their reasons).
enum Worked {
    Plugin(ForeignOutput, Vec<u32>, u64),
    Host((Vec<u32>, Vec<(usize, String)>)),
}

/// Settles what the chain decided and hands the rest of the batch to the sinks.
fn hand_to_sinks(batch: Processed, heads: &Heads) {
    let Processed { outcomes, origins, mut letters, current, awaiting, ack, received, trace, taken } = batch;
    let source_metrics = &heads.source_metrics;
    let (total_sinks, ack_mode) = (heads.total_sinks, heads.ack_mode);
    let tracker = Arc::new(Tracker {
        outcomes: Mutex::new(outcomes),
        remaining: AtomicUsize::new(if origins.is_empty() { 0 } else { total_sinks }),
        ack: Mutex::new(Some(ack)),
        awaiting: Mutex::new(awaiting),
        received,
        source: source_metrics.clone(),
    });
    // Refused records are kept before the source hears of them.
    if let Some(dl) = &heads.dead_letters {
        dl.send(std::mem::take(&mut letters), &tracker, trace.clone());
    }
    if tracker.remaining.load(Relaxed) == 0 {
        tracker.settle();
    }
    if ack_mode == Acknowledge::Accepted || tracker.remaining.load(Relaxed) == 0 {
        tracker.fire();
    }
    if origins.is_empty() {
        return;
    }
    let shared = Arc::new(current);
    let origins = Arc::new(origins);
    for (s, (queue, buffer)) in heads.sinks.iter().enumerate() {
        let m = &queue.metrics;
        // A sink that does not take the batch settles its part and that of the sinks that run
        // after it, which get nothing of it from this one.
        let skip = || {
            for _ in 0..=heads.followers[s] {
                tracker.done();
            }
        };
        // A sink with a condition gets the records it takes (none: it has nothing to do).
        let (shared, origins) = match taken.as_ref().and_then(|t| t[s].as_deref()) {
            None => (shared.clone(), origins.clone()),
            Some([]) => {
                skip();
                continue;
            }
            Some(picked) => {
                let view = shared.view();
                let metas = picked.iter().map(|&i| view.metas()[i as usize]).collect();
                let picked_origins = picked.iter().map(|&i| origins[i as usize]).collect();
                (Arc::new(Current::Routed { base: shared.clone(), metas }), Arc::new(picked_origins))
            }
        };
        let (records, bytes) = (shared.view().len(), shared.bytes());
        if let Some(log) = &buffer.disk {
            // On disk is delivered as far as the source is concerned.
            let block = buffer.spec.when_full == WhenFull::Block;
            match log.append(&shared.view(), block, &|| heads.abandon.load(Relaxed)) {
                Ok(true) => {}
                Ok(false) => {
                    m.dropped.fetch_add(records as u64, Relaxed);
                }
                Err(e) => {
                    m.errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "Disk buffer write failed; the batch is failed.");
                    let reason = Refusal::pipeline(e.to_string());
                    let mut o = tracker.outcomes.lock().unwrap_or_else(|p| p.into_inner());
                    for &origin in origins.iter() {
                        o.set(origin, outcome::FAILED, Some(reason.clone()));
                    }
                }
            }
            m.custom("disk_buffer_bytes", "Bytes waiting in the sink's disk buffer.", false, log.held() as f64);
            // Its followers get the records when the sink delivers them from disk.
            skip();
            continue;
        }
        if !buffer.admit(records, bytes, &heads.abandon) {
            // drop_newest: this sink does not get the batch (the others do); counted.
            m.dropped.fetch_add(records as u64, Relaxed);
            skip();
            continue;
        }
        let job = SinkJob { batch: shared.clone(), origins: origins.clone(), tracker: tracker.clone(), trace: trace.clone() };
        if queue.send(job).is_err() {
            buffer.release(records, bytes);
            // The sink's thread is gone: its records are not delivered.
            m.errors.fetch_add(1, Relaxed);
            let reason = Refusal::pipeline("a sink stopped unexpectedly");
            let mut o = tracker.outcomes.lock().unwrap_or_else(|p| p.into_inner());
            for &origin in origins.iter() {
                o.set(origin, outcome::FAILED, Some(reason.clone()));
            }
            drop(o);
            skip();
        }
    }
}
