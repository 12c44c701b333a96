//! The source's queue: what the source emits is offered here, pushed back when full.

use super::*;

pub(super) struct Envelope {
    pub(super) batch: BatchBuf,
    pub(super) ack: AckGuard,
    pub(super) received: Instant,
}

pub(super) struct QueueIntake {
    pub(super) tx: Mutex<Option<SyncSender<Envelope>>>,
    pub(super) metrics: Arc<StageMetrics>,
    pub(super) finished: AtomicBool,
    /// Paused through the admin API: every offer is refused as backpressure.
    pub(super) paused: AtomicBool,
}

impl Intake for QueueIntake {
    fn offer(&self, batch: BatchBuf, ack: AckGuard) -> Result<(), (Status, AckGuard)> {
        if self.paused.load(Relaxed) {
            self.metrics.backpressure.fetch_add(1, Relaxed);
            return Err((Status::FULL, ack));
        }
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err((Status::CLOSED, ack));
        };
        let n = batch.len() as u64;
        match tx.try_send(Envelope { batch, ack, received: Instant::now() }) {
            Ok(()) => {
                self.metrics.records_out.fetch_add(n, Relaxed);
                self.metrics.batches.fetch_add(1, Relaxed);
                self.metrics.queue_depth.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(env)) => {
                self.metrics.backpressure.fetch_add(1, Relaxed);
                Err((Status::FULL, env.ack))
            }
            Err(TrySendError::Disconnected(env)) => Err((Status::CLOSED, env.ack)),
        }
    }

    fn finish(&self) {
        self.finished.store(true, Relaxed);
        self.close();
    }
}

impl QueueIntake {
    pub(super) fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
