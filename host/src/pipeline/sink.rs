//! Sink threads: delivery with retries, sinks that run after another, and the refused
//! records they hand to the dead-letter sink.

use super::*;

/// A sink that runs after another, fed from its thread.
#[derive(Clone)]
pub(super) struct Downstream {
    pub(super) queue: SinkQueue,
    pub(super) takes: Takes,
}

pub(super) struct SinkJob {
    pub(super) batch: Arc<Current>,
    pub(super) origins: Arc<Vec<u32>>,
    pub(super) tracker: Arc<Tracker>,
    /// The span the sink's span is a child of, when traces are on.
    pub(super) trace: Option<SpanContext>,
}

/// Gives a following sink the records it takes, marked with their outcome here.
fn hand_on(d: &Downstream, batch: &BatchRef<'_>, job: &SinkJob, refused: &[Option<Refusal>], trace: Option<&SpanContext>) {
    let mut out = BatchBuf::new();
    let mut origins = Vec::new();
    for (i, reason) in refused.iter().enumerate() {
        let wanted = match d.takes {
            Takes::All => true,
            Takes::Delivered => reason.is_none(),
            Takes::Refused => reason.is_some(),
        };
        if !wanted {
            continue;
        }
        let r = batch.get(i);
        let why = reason.as_ref().map(Refusal::to_string);
        let marks: Vec<(&str, &[u8])> = match &why {
            None => vec![("weir.outcome", b"delivered")],
            Some(why) => vec![("weir.outcome", b"refused"), ("weir.reason", why.as_bytes())],
        };
        out.push(i as u32, weir_plugin::Head { extra_headers: &marks, ..weir_plugin::Head::from(&r) }, r.value);
        origins.push(job.origins[i]);
    }
    if out.is_empty() {
        job.tracker.done();
        return;
    }
    let next =
        SinkJob { batch: Arc::new(Current::Host(out)), origins: Arc::new(origins), tracker: job.tracker.clone(), trace: trace.cloned() };
    if d.queue.send(next).is_err() {
        job.tracker.done();
    }
}

/// Delivers batches to one sink, retrying when it asks to, then hands what it delivered
/// or refused to the sinks that run after it.
pub(super) fn run_sink(
    pipeline: &str,
    mut sink: Stage,
    rx: SinkInbox,
    downstream: Vec<Downstream>,
    dead_letters: Option<DeadLetters>,
    abandon: Arc<AtomicBool>,
) {
    let mut ctx = SinkCtx { pipeline, tracer: telemetry::tracer(), jitter: Jitter::new(), downstream, dead_letters, abandon };
    match sink.buffer.disk.clone() {
        None => {
            while let Some(job) = rx.recv() {
                deliver(&mut sink, &mut ctx, job);
            }
        }
        Some(log) => {
            // From the disk buffer: each batch is delivered (or dead-lettered), then the
            // buffer's read position moves past it. One reader at a time: a new version of
            // the pipeline reads once this one has stopped writing and hands over.
            let _reading = log.read_lock();
            let buffer = sink.buffer.clone();
            let handing_over = || buffer.writer_done.load(Relaxed) && log.reader_waiting();
            while !ctx.abandon.load(Relaxed) && !handing_over() {
                match log.next(Duration::from_millis(200)) {
                    Ok(Some((batch, next))) => {
                        let n = batch.len();
                        let tracker = Arc::new(Tracker {
                            outcomes: Mutex::new(Outcomes::new(n)),
                            remaining: AtomicUsize::new(1),
                            ack: Mutex::new(None),
                            awaiting: Mutex::new(Vec::new()),
                            received: Instant::now(),
                            source: sink.metrics.clone(),
                        });
                        let job = SinkJob {
                            batch: Arc::new(Current::Host(batch)),
                            origins: Arc::new((0..n as u32).collect()),
                            tracker,
                            trace: None,
                        };
                        deliver(&mut sink, &mut ctx, job);
                        if ctx.abandon.load(Relaxed) {
                            // The drain timed out while the sink was retrying: the batch stays
                            // on disk for the next start.
                            break;
                        }
                        if let Err(e) = log.commit(next) {
                            tracing::error!(stage = %sink.name, error = %e, "Disk buffer position not saved; these records may be delivered again.");
                        }
                        sink.metrics.custom("disk_buffer_bytes", "Bytes waiting in the sink's disk buffer.", false, log.held() as f64);
                    }
                    Ok(None) if log.is_drained() => break,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(stage = %sink.name, error = %e, "Disk buffer cannot be read; retrying.");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
    }
    if let Some(inst) = sink.slot.lock().unwrap_or_else(|p| p.into_inner()).instance.as_mut() {
        if let Err(e) = inst.stop() {
            tracing::warn!(stage = %sink.name, error = %e, "Sink did not stop cleanly.");
        }
    }
}

/// What a sink thread keeps between batches.
struct SinkCtx<'a> {
    pub(super) pipeline: &'a str,
    pub(super) tracer: Option<&'static telemetry::Tracing>,
    pub(super) jitter: Jitter,
    pub(super) downstream: Vec<Downstream>,
    pub(super) dead_letters: Option<DeadLetters>,
    pub(super) abandon: Arc<AtomicBool>,
}

/// Delivers one batch to a sink: retries as the sink asks, then hands what it delivered or
/// refused to the sinks after it and refused records to the dead-letter sink.
fn deliver(sink: &mut Stage, ctx: &mut SinkCtx<'_>, job: SinkJob) {
    let (pipeline, tracer, downstream, dead_letters, abandon) =
        (ctx.pipeline, ctx.tracer, &ctx.downstream, &ctx.dead_letters, &ctx.abandon);
    let jitter = &mut ctx.jitter;
    let batch = job.batch.view();
    let held = (batch.len(), job.batch.bytes());
    let mut span = tracer.zip(job.trace.as_ref()).map(|(t, parent)| {
        let site = SpanSite { pipeline, stage: &sink.name, plugin: &sink.plugin.name, kind: "sink" };
        t.start(&site, Some(parent), Vec::new(), batch.len(), SystemTime::now())
    });
    // Records leave with a `traceparent` naming this sink's span, so the next hop
    // (another pipeline, another host) continues the trace from here.
    let rewritten = span.as_ref().filter(|s| s.sampled()).map(|s| telemetry::with_traceparent(&batch, &s.context()));
    let batch = rewritten.as_ref().map(|b| b.as_ref()).unwrap_or(batch);
    let mut attempt = 0u32;
    let first_try = Instant::now();
    let mut failed_all = false;
    sink.metrics.records_in.fetch_add(batch.len() as u64, Relaxed);
    sink.metrics.batches.fetch_add(1, Relaxed);
    // Per record of the batch: why it was refused, or None when delivered.
    let mut refused: Vec<Option<Refusal>> = vec![None; batch.len()];
    loop {
        let started = Instant::now();
        let result = sink.process(&batch);
        sink.metrics.latency.observe(started.elapsed());
        match result {
            Ok((out, _)) => {
                let rejections = out.rejections();
                sink.metrics.rejected.fetch_add(rejections.len() as u64, Relaxed);
                sink.metrics.records_out.fetch_add(batch.len().saturating_sub(rejections.len()) as u64, Relaxed);
                if let Some(span) = span.as_mut() {
                    span.count("weir.records.rejected", rejections.len());
                }
                let mut o = job.tracker.outcomes.lock().unwrap_or_else(|p| p.into_inner());
                for (i, reason) in rejections {
                    let reason = Refusal::by(&sink.name, reason);
                    o.set(job.origins[i], outcome::REJECTED, Some(reason.clone()));
                    refused[i] = Some(reason);
                }
                drop(o);
                sink.metrics.tap.capture_where(&batch, |i| refused[i].is_none());
                sink.succeeded();
                break;
            }
            Err(e) => {
                let (status, hint, message) = (e.status, e.retry_after_ms, e.to_string());
                sink.metrics.errors.fetch_add(1, Relaxed);
                if matches!(status, Status::PANICKED | Status::POISONED) {
                    sink.poison();
                }
                if status != Status::RETRY {
                    sink.failed(&message);
                }
                let out_of_time = sink.max_retry.is_some_and(|m| first_try.elapsed() >= m);
                if status == Status::RETRY && !abandon.load(Relaxed) && !out_of_time {
                    let wait = backoff(&sink.retry, attempt, hint, jitter);
                    tracing::warn!(stage = %sink.name, error = %message, attempt, retry_in_ms = wait.as_millis() as u64, "Sink asked to retry the batch.");
                    attempt += 1;
                    std::thread::sleep(wait);
                    continue;
                }
                tracing::error!(stage = %sink.name, error = %message, records = batch.len(), "Sink failed the batch.");
                if let Some(span) = span.as_mut() {
                    span.fail(&message);
                }
                let message = if status == Status::RETRY && out_of_time {
                    format!("gave up after {attempt} retries in {:.1} s: {message}", first_try.elapsed().as_secs_f64())
                } else {
                    message
                };
                failed_all = true;
                let reason = Refusal::by(&sink.name, message);
                let mut o = job.tracker.outcomes.lock().unwrap_or_else(|p| p.into_inner());
                for (i, &origin) in job.origins.iter().enumerate() {
                    o.set(origin, outcome::FAILED, Some(reason.clone()));
                    refused[i] = Some(reason.clone());
                }
                break;
            }
        }
    }
    let cx = span.map(|mut s| {
        s.count("weir.retries", attempt as usize);
        let cx = s.context();
        s.end();
        cx
    });
    for d in downstream {
        hand_on(d, &batch, &job, &refused, cx.as_ref().or(job.trace.as_ref()));
    }
    if let Some(dl) = &dead_letters {
        let mut letters = Letters::default();
        let outcome = if failed_all { "failed" } else { "rejected" };
        for (i, why) in refused.iter().enumerate() {
            if let Some(why) = why {
                letters.add(&batch.get(i), job.origins[i], &sink.name, outcome, &why.text);
            }
        }
        dl.send(letters, &job.tracker, cx.or(job.trace.clone()));
    }
    sink.buffer.release(held.0, held.1);
    job.tracker.done();
}
