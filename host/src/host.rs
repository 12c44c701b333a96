//! The running host: its plugins, pipelines and metrics.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::{pipeline_files, PipelineFile};
use crate::loader::Registry;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, State};

/// The host.
pub struct Host {
    /// Plugins found at start.
    pub registry: Registry,
    /// All metrics.
    pub metrics: Arc<Metrics>,
    /// When the host started.
    pub started: Instant,
    pipelines: RwLock<Vec<Arc<Pipeline>>>,
}

impl Host {
    /// A host with the plugins found in `registry`.
    pub fn new(registry: Registry) -> Self {
        let metrics = Arc::new(Metrics::default());
        metrics.plugin_load_failures.store(registry.broken.len() as u64, Relaxed);
        for b in &registry.broken {
            tracing::warn!(path = %b.path.display(), reason = %b.reason, "Plugin library skipped.");
        }
        Host { registry, metrics, started: Instant::now(), pipelines: RwLock::default() }
    }

    /// Every pipeline, running or failed.
    pub fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        self.pipelines.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts every pipeline file in `dir`. A pipeline that fails is logged and shown as
    /// failed; the others run. Returns how many run.
    pub fn start_dir(&self, dir: &Path) -> Result<usize, crate::error::HostError> {
        let files = pipeline_files(dir)?;
        if files.is_empty() {
            return Err(crate::error::HostError::Usage(format!("no pipeline files (*.yaml) in {}", dir.display())));
        }
        for path in files {
            let started = PipelineFile::load(&path).and_then(|f| {
                if let Some(other) = self.pipelines().iter().find(|p| p.name == f.name) {
                    return Err(f.error_at(
                        "/name",
                        format!("pipeline name {:?} is also used by {}; names must be unique", f.name, other.file.display()),
                    ));
                }
                Pipeline::start(&f, &self.registry, &self.metrics)
            });
            let pipeline = match started {
                Ok(p) => p,
                Err(e) => {
                    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    tracing::error!(file = %path.display(), error = %e, "Pipeline not started.");
                    self.metrics.pipeline_states.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), "failed".into());
                    Pipeline::failed(&name, &path, &e.to_string())
                }
            };
            self.pipelines.write().unwrap_or_else(|p| p.into_inner()).push(Arc::new(pipeline));
        }
        Ok(self.pipelines().iter().filter(|p| p.state().0 == State::Running).count())
    }

    /// Stops every pipeline, draining in parallel.
    pub fn shutdown(&self, timeout: Duration) {
        let handles: Vec<_> = self
            .pipelines()
            .into_iter()
            .map(|p| {
                let metrics = self.metrics.clone();
                std::thread::spawn(move || p.stop(timeout, &metrics))
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}
