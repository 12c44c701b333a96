//! What waits in front of a sink: limits in records and bytes, and the disk buffer.

use super::*;

/// What waits in front of one sink, against its limits.
pub(super) struct Buffer {
    pub(super) spec: BufferSpec,
    /// (records, bytes) waiting.
    pub(super) held: Mutex<(usize, usize)>,
    pub(super) room: std::sync::Condvar,
    /// With `disk`: the log batches are written to before the sink reads them.
    pub(super) disk: Option<Arc<DiskLog>>,
    /// This pipeline version writes no more to `disk`.
    pub(super) writer_done: AtomicBool,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.finish_writing();
    }
}

impl Buffer {
    pub(super) fn new(spec: Option<BufferSpec>, disk: Option<Arc<DiskLog>>) -> Arc<Self> {
        let spec = spec.unwrap_or(BufferSpec { max_events: None, max_bytes: None, when_full: WhenFull::Block, disk: None });
        Arc::new(Buffer { spec, held: Mutex::new((0, 0)), room: std::sync::Condvar::new(), disk, writer_done: AtomicBool::new(false) })
    }

    /// This version will write no more to its disk buffer (once; also when never started).
    pub(super) fn finish_writing(&self) {
        if let Some(log) = &self.disk {
            if !self.writer_done.swap(true, Relaxed) {
                log.close();
            }
        }
    }

    pub(super) fn fits(&self, held: (usize, usize), records: usize, bytes: usize) -> bool {
        // An empty buffer takes any batch, so one larger than the limits still moves.
        held == (0, 0)
            || (self.spec.max_events.is_none_or(|m| held.0 + records <= m.get())
                && self.spec.max_bytes.is_none_or(|m| held.1 + bytes <= m.get()))
    }

    /// Takes a batch in: waits for room (`block`) or says no (`drop_newest`).
    pub(super) fn admit(&self, records: usize, bytes: usize, abandon: &AtomicBool) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while !self.fits(*held, records, bytes) {
            if self.spec.when_full == WhenFull::DropNewest || abandon.load(Relaxed) {
                return false;
            }
            held = self.room.wait_timeout(held, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
        held.0 += records;
        held.1 += bytes;
        true
    }

    pub(super) fn release(&self, records: usize, bytes: usize) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.0 = held.0.saturating_sub(records);
        held.1 = held.1.saturating_sub(bytes);
        self.room.notify_all();
    }
}

/// Opens a sink's disk buffer, reporting what it found.
pub(super) fn open_disk_buffer(
    file: &PipelineFile,
    pointer: &str,
    dir: &Path,
    spec: Option<&BufferSpec>,
    stage: &str,
    metrics: &Arc<StageMetrics>,
) -> Result<Arc<DiskLog>, HostError> {
    let max = spec.and_then(|b| b.max_bytes).map_or(1 << 30, |m| m.get() as u64);
    let (log, opened) = DiskLog::shared(dir, max).map_err(|e| file.error_at(&format!("{pointer}/buffer/disk"), e.to_string()))?;
    // Already open for the running version of the pipeline: nothing new to report.
    let Some(opened) = opened else { return Ok(log) };
    if let Some(why) = &opened.corruption {
        tracing::error!(stage, buffer = %dir.display(), problem = %why, pending = opened.pending_frames, "Disk buffer damaged; the frames before the damage are delivered.");
        metrics.custom("disk_buffer_corruptions", "Damaged disk buffer tails found (and cut off) at start.", true, 1.0);
    }
    if opened.pending_frames > 0 {
        tracing::info!(stage, buffer = %dir.display(), batches = opened.pending_frames, "Disk buffer replays batches not yet delivered.");
    }
    Ok(log)
}
