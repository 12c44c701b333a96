//! The queue in front of each sink's thread: one type for every feeder (the transform
//! workers, the sink a later sink runs after, the refused records bound for the dead-letter
//! sink), keeping the sink's `queue_depth` as batches go in and come out.

use super::*;

/// A sink's queue, as its feeders see it.
#[derive(Clone)]
pub(super) struct SinkQueue {
    tx: SyncSender<SinkJob>,
    /// The sink's metrics.
    pub(super) metrics: Arc<StageMetrics>,
}

/// A sink's queue, as the sink's threads see it (one per worker, taking turns).
#[derive(Clone)]
pub(super) struct SinkInbox {
    rx: Arc<Mutex<Receiver<SinkJob>>>,
    metrics: Arc<StageMetrics>,
}

/// A queue of `capacity` batches in front of the sink whose metrics are `metrics`.
pub(super) fn sink_queue(capacity: usize, metrics: &Arc<StageMetrics>) -> (SinkQueue, SinkInbox) {
    let (tx, rx) = sync_channel(capacity);
    (SinkQueue { tx, metrics: metrics.clone() }, SinkInbox { rx: Arc::new(Mutex::new(rx)), metrics: metrics.clone() })
}

impl SinkQueue {
    /// Queues `job`, waiting while the queue is full; gives it back when the sink's thread
    /// has gone.
    pub(super) fn send(&self, job: SinkJob) -> Result<(), SinkJob> {
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        self.tx.send(job).map_err(|back| {
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            back.0
        })
    }
}

impl SinkInbox {
    /// The next batch; `None` once every feeder has gone and the queue is empty. The sink's
    /// workers wait their turn for it.
    pub(super) fn recv(&self) -> Option<SinkJob> {
        let job = self.rx.lock().unwrap_or_else(|p| p.into_inner()).recv().ok()?;
        self.metrics.queue_depth.fetch_sub(1, Relaxed);
        Some(job)
    }
}
