//! Acknowledgement tracking: each source record's outcome as its batch moves on, settled
//! once every sink it went to is done, then told to the transforms that asked and to the source.

use super::*;

/// Why a record was refused or failed: the stage that said so (none when the pipeline
/// itself failed it) and what it said, kept apart until shown (`stage: text`).
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    pub(super) stage: Option<Arc<str>>,
    /// Shared by every record of a batch failed whole.
    pub(super) text: Arc<str>,
}

impl Refusal {
    /// What `stage` said.
    pub(super) fn by(stage: &Arc<str>, text: impl Into<Arc<str>>) -> Refusal {
        Refusal { stage: Some(stage.clone()), text: text.into() }
    }

    /// What the pipeline itself says (a disk buffer that failed, a sink thread gone).
    pub(super) fn pipeline(text: impl Into<Arc<str>>) -> Refusal {
        Refusal { stage: None, text: text.into() }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.stage {
            Some(stage) => write!(f, "{stage}: {}", self.text),
            None => f.write_str(&self.text),
        }
    }
}

/// Everything measured per source record while its batch moves through the pipeline.
pub(super) struct Outcomes {
    pub(super) codes: Vec<u8>,
    reasons: Vec<Option<Refusal>>,
}

impl Outcomes {
    pub(super) fn new(n: usize) -> Self {
        Outcomes { codes: vec![outcome::ACCEPTED; n], reasons: vec![None; n] }
    }

    /// Records what became of source record `origin`; a refusal or failure keeps its reason.
    pub(super) fn set(&mut self, origin: u32, code: u8, reason: Option<Refusal>) {
        let i = origin as usize;
        // The first refusal wins: later stages never saw the record.
        if self.codes[i] == outcome::ACCEPTED || self.codes[i] == outcome::DROPPED {
            self.codes[i] = code;
            self.reasons[i] = reason;
        }
    }

    /// The reason of source record `origin` as shown to plugins (empty when it has none).
    fn text(&self, origin: usize) -> String {
        self.reasons[origin].as_ref().map(Refusal::to_string).unwrap_or_default()
    }
}

/// A transform waiting to hear what became of one batch it processed (ABI minor 1
/// `acknowledge`).
pub(super) struct Part {
    pub(super) stage: Arc<str>,
    pub(super) slot: Arc<Mutex<Slot>>,
    /// The instance generation that processed it, and its number for the batch.
    pub(super) generation: u64,
    pub(super) sequence: u64,
    /// For each of the transform's input records, the source record it came from.
    pub(super) origins: Vec<u32>,
}

/// The acknowledgement owed for one source batch, completed by the last sink.
pub(super) struct Tracker {
    pub(super) outcomes: Mutex<Outcomes>,
    pub(super) remaining: AtomicUsize,
    pub(super) ack: Mutex<Option<AckGuard>>,
    /// Transforms that want to hear what became of the batch (always after delivery, also
    /// with `acknowledge: accepted`).
    pub(super) awaiting: Mutex<Vec<Part>>,
    /// When the source emitted the batch, and whose metrics get the acknowledgement lag.
    pub(super) received: Instant,
    pub(super) source: Arc<StageMetrics>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // Never completed (a sink thread went away with it): what was not refused failed.
        if self.awaiting.get_mut().map_or(true, |a| a.is_empty()) {
            return;
        }
        let mut guard = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let o = &mut *guard;
        let stopped = Refusal::pipeline("the pipeline stopped before the batch was delivered");
        for (code, reason) in o.codes.iter_mut().zip(o.reasons.iter_mut()) {
            if *code == outcome::ACCEPTED {
                *code = outcome::FAILED;
                *reason = Some(stopped.clone());
            }
        }
        drop(guard);
        self.settle();
    }
}

impl Tracker {
    pub(super) fn done(&self) {
        if self.remaining.fetch_sub(1, Relaxed) == 1 {
            // The transforms hear of it before the source, so a retry the source's answer
            // prompts finds them knowing.
            self.settle();
            self.fire();
        }
    }

    /// Tells the transforms that asked what became of their input records (once), before
    /// the source hears of it: a transform that keeps state elsewhere (dedupe in Redis) has
    /// it stored by the time the source commits or answers its client.
    pub(super) fn settle(&self) {
        let parts = std::mem::take(&mut *self.awaiting.lock().unwrap_or_else(|p| p.into_inner()));
        if parts.is_empty() {
            return;
        }
        let o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let told: Vec<(Part, Vec<u8>, Vec<String>)> = parts
            .into_iter()
            .map(|part| {
                let codes = part.origins.iter().map(|&i| o.codes[i as usize]).collect();
                let reasons = part.origins.iter().map(|&i| o.text(i as usize)).collect();
                (part, codes, reasons)
            })
            .collect();
        drop(o);
        for (part, codes, reasons) in told {
            let mut slot = part.slot.lock().unwrap_or_else(|p| p.into_inner());
            // A batch processed by an instance since re-created is news to nobody.
            if slot.generation != part.generation {
                continue;
            }
            let Some(instance) = slot.instance.as_mut() else { continue };
            if let Err(e) = instance.acknowledge(&[(part.sequence, codes, reasons)]) {
                tracing::warn!(stage = %part.stage, error = %e, "Transform failed to take an acknowledgement.");
                if e.poisoned() {
                    poison(&mut slot);
                }
            }
        }
    }

    pub(super) fn fire(&self) {
        if let Some(ack) = self.ack.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
            let reasons: Vec<String> = (0..o.codes.len()).map(|i| o.text(i)).collect();
            ack.send(&o.codes, &reasons);
            for &code in &o.codes {
                if let Some(c) = self.source.outcomes.get(code as usize) {
                    c.fetch_add(1, Relaxed);
                }
            }
            self.source.ack_latency.observe(self.received.elapsed());
        }
    }
}
