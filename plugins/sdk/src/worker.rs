//! A source's own thread, stopped on request: for sources that produce from a blocking
//! loop (a file, a client library with its own poll loop) rather than on [`crate::runtime()`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::PluginError;

/// Tells a worker's loop when to end. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Whether the loop should end.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}

/// A named thread running a source's loop.
#[derive(Debug)]
pub struct Worker {
    stop: StopFlag,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `run` on a new thread; it should return soon after its flag is set.
    pub fn spawn(name: &str, run: impl FnOnce(StopFlag) + Send + 'static) -> Result<Worker, PluginError> {
        let stop = StopFlag::default();
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(flag))
            .map_err(|e| PluginError::fatal(format!("cannot start thread {name}: {e}")))?;
        Ok(Worker { stop, handle: Some(handle) })
    }

    /// Sets the flag and waits for the loop to return.
    pub fn stop(&mut self) {
        self.stop.set();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    /// Waits for the loop to return by itself (tests).
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
