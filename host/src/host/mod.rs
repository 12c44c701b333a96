//! The running host: its plugins, pipelines and metrics; `manage` changes pipelines through
//! the admin API.

mod manage;

pub use manage::{etag, Applied, ApplyError, Preconditions, Problem};

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::{pipeline_files, PipelineFile};
use crate::loader::Registry;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, State};

/// What a reload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// `ok`, or `failed` when some pipeline kept its old version because the new one was invalid.
    pub result: String,
    /// When it finished (RFC 3339).
    pub at: String,
    /// Pipelines started from new files.
    pub started: Vec<String>,
    /// Pipelines replaced by their new version.
    pub replaced: Vec<String>,
    /// Pipelines whose file disappeared.
    pub stopped: Vec<String>,
    /// Pipelines left alone.
    pub unchanged: Vec<String>,
    /// Plugin libraries loaded by this reload (new or rebuilt).
    pub libraries_loaded: Vec<String>,
    /// Why a new version was refused (the old one keeps running).
    pub errors: Vec<String>,
}

/// The host.
pub struct Host {
    /// The plugins, as of the last reload.
    registry: RwLock<Arc<Registry>>,
    /// Where plugin libraries are looked for.
    plugin_dirs: Vec<std::path::PathBuf>,
    /// All metrics.
    pub metrics: Arc<Metrics>,
    /// When the host started.
    pub started: Instant,
    pipelines: RwLock<Vec<Arc<Pipeline>>>,
    /// The pipeline directory, and the last reload's report.
    dir: Mutex<Option<std::path::PathBuf>>,
    last_reload: Mutex<Option<ReloadReport>>,
    /// Per pipeline name: its version (1 when first started, +1 each time it is replaced)
    /// and what the last reload did to it.
    history: Mutex<std::collections::HashMap<String, (u64, serde_json::Value)>>,
    /// Held for the length of a reload: reloads never overlap.
    reloading: Mutex<()>,
    /// Held while a pipeline is written or removed through the admin API, from the check of
    /// its `If-Match` to the reload that applies it.
    applying: Mutex<()>,
}

impl Host {
    /// A host with the plugins found in `registry`, which a reload scans again in `plugin_dirs`.
    pub fn new(registry: Registry, plugin_dirs: Vec<std::path::PathBuf>) -> Self {
        let metrics = Arc::new(Metrics::default());
        metrics.plugin_load_failures.store(registry.broken.len() as u64, Relaxed);
        metrics.plugin_libraries.store(registry.libraries.len() as u64, Relaxed);
        for b in &registry.broken {
            tracing::warn!(path = %b.path.display(), reason = %b.reason, "Plugin library skipped.");
        }
        Host {
            registry: RwLock::new(Arc::new(registry)),
            plugin_dirs,
            metrics,
            started: Instant::now(),
            pipelines: RwLock::default(),
            dir: Mutex::default(),
            last_reload: Mutex::default(),
            history: Mutex::default(),
            reloading: Mutex::default(),
            applying: Mutex::default(),
        }
    }

    /// The plugins in use now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records what a reload (or start, or restart) did to a pipeline; `bump` for a new version.
    fn note(&self, name: &str, result: &str, error: Option<&str>, bump: bool) {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let entry = h.entry(name.to_owned()).or_insert((0, serde_json::Value::Null));
        if bump {
            entry.0 += 1;
        }
        let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        entry.1 = serde_json::json!({ "at": at, "result": result, "error": error });
    }

    /// What the admin API shows of a pipeline: its report, version and last reload.
    pub fn report(&self, p: &Pipeline) -> serde_json::Value {
        let mut r = p.report();
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let (version, last) = h.get(&p.name).cloned().unwrap_or((1, serde_json::Value::Null));
        r["version"] = version.into();
        r["etag"] = etag(p.hash).into();
        r["last_reload"] = last;
        r
    }

    /// Every pipeline, running or failed.
    pub fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        self.pipelines.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts every pipeline file in `dir`. A pipeline that fails is logged and shown as
    /// failed; the others run. Returns how many started (none in an empty directory),
    /// counting one that has already finished: a short `--once` input may be done before
    /// this returns.
    pub fn start_dir(&self, dir: &Path) -> Result<usize, crate::error::HostError> {
        *self.dir.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.to_path_buf());
        let files = pipeline_files(dir)?;
        if files.is_empty() {
            tracing::info!(dir = %dir.display(), "No pipeline files yet; waiting for one (PUT /pipelines/NAME, `weir apply`, or a file).");
        }
        for path in files {
            let started = PipelineFile::load(&path).and_then(|f| {
                if let Some(other) = self.pipelines().iter().find(|p| p.name == f.name) {
                    return Err(f.error_at(
                        "/name",
                        format!("pipeline name {:?} is also used by {}; names must be unique", f.name, other.file.display()),
                    ));
                }
                Pipeline::start(&f, &self.registry(), &self.metrics)
            });
            let pipeline = match started {
                Ok(p) => {
                    self.note(&p.name, "started", None, true);
                    p
                }
                Err(e) => {
                    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    tracing::error!(file = %path.display(), error = %e, "Pipeline not started.");
                    self.metrics.pipeline_states.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), "failed".into());
                    Pipeline::failed(&name, &path, &e.to_string())
                }
            };
            self.pipelines.write().unwrap_or_else(|p| p.into_inner()).push(Arc::new(pipeline));
        }
        Ok(self.pipelines().iter().filter(|p| p.state().0 != State::Failed).count())
    }

    /// The last reload's report.
    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last_reload.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_state(&self, name: &str, state: &str) {
        self.metrics.pipeline_states.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), state.to_owned());
    }

    /// Stops a pipeline and starts it again from its file, make-before-break.
    pub fn restart(&self, name: &str, drain: Duration) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.pipelines().into_iter().find(|p| p.name == name).ok_or_else(|| format!("no pipeline called {name:?}"))?;
        let file = PipelineFile::load(&old.file).map_err(|e| e.to_string())?;
        let new = Arc::new(Pipeline::start(&file, &self.registry(), &self.metrics).map_err(|e| e.to_string())?);
        old.stop(drain, &self.metrics);
        self.metrics.remove(&old.stage_metrics());
        self.set_state(&new.name, "running");
        self.note(&new.name, "restarted", None, true);
        let mut list = self.pipelines.write().unwrap_or_else(|p| p.into_inner());
        list.retain(|p| !Arc::ptr_eq(p, &old));
        list.push(new);
        Ok(())
    }

    /// Applies the pipeline directory as it is now, by difference: new files start, removed
    /// ones stop (draining), changed ones are replaced make-before-break (the new version
    /// starts on the same sockets, then the old one stops and drains), unchanged ones are not
    /// touched. A new version that does not parse, names an unknown plugin, fails its
    /// plugins' checks or cannot start leaves the old version running, and the report says why.
    pub fn reload(&self, drain: Duration) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = ReloadReport::default();
        let dir = self.dir.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        let files = match pipeline_files(&dir) {
            Ok(f) => f,
            Err(e) => {
                report.errors.push(e.to_string());
                return self.finish_reload(report);
            }
        };
        let (registry, loaded, refused) = self.registry().refresh(&self.plugin_dirs);
        let registry = Arc::new(registry);
        if !loaded.is_empty() || !refused.is_empty() {
            tracing::info!(loaded = ?loaded, refused = ?refused, "Plugin libraries rescanned.");
        }
        self.metrics.plugin_load_failures.fetch_add(refused.len() as u64, Relaxed);
        self.metrics.plugin_libraries.store(registry.libraries.len() as u64, Relaxed);
        report.libraries_loaded = loaded;
        report.errors.extend(refused);
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry.clone();
        let mut keep: Vec<Arc<Pipeline>> = Vec::new();
        let mut replaced: Vec<Arc<Pipeline>> = Vec::new();
        for path in &files {
            let old = self.pipelines().into_iter().find(|p| &p.file == path);
            let file = match PipelineFile::load(path) {
                Ok(f) => f,
                Err(e) => {
                    if let Some(o) = &old {
                        self.note(&o.name, "refused", Some(&e.to_string()), false);
                    }
                    report.errors.push(e.to_string());
                    keep.extend(old);
                    continue;
                }
            };
            let old = old.or_else(|| self.pipelines().into_iter().find(|p| p.name == file.name));
            if let Some(o) = &old {
                // Unchanged: same file, running, and every plugin still from the same library.
                if o.hash == file.hash() && o.state().0 == State::Running && o.uses_current_plugins(&registry) {
                    report.unchanged.push(file.name.clone());
                    self.note(&file.name, "unchanged", None, false);
                    keep.push(o.clone());
                    continue;
                }
            }
            if keep.iter().any(|p| p.name == file.name) {
                report.errors.push(
                    file.error_at("/name", format!("pipeline name {:?} is used by two files; names must be unique", file.name)).to_string(),
                );
                continue;
            }
            match Pipeline::start(&file, &registry, &self.metrics) {
                Ok(new) => {
                    if let Some(o) = old {
                        o.stop(drain, &self.metrics);
                        self.metrics.remove(&o.stage_metrics());
                        report.replaced.push(file.name.clone());
                        self.note(&file.name, "replaced", None, true);
                        replaced.push(o);
                    } else {
                        report.started.push(file.name.clone());
                        self.note(&file.name, "started", None, true);
                    }
                    self.set_state(&file.name, "running");
                    keep.push(Arc::new(new));
                }
                Err(e) => {
                    self.note(&file.name, "refused", Some(&e.to_string()), false);
                    report.errors.push(e.to_string());
                    keep.extend(old);
                }
            }
        }
        for p in self.pipelines() {
            // Replaced ones were stopped above; what is left here lost its file.
            let handled = keep.iter().chain(&replaced).any(|k| Arc::ptr_eq(k, &p));
            if !handled && !files.contains(&p.file) {
                p.stop(drain, &self.metrics);
                self.metrics.remove(&p.stage_metrics());
                self.metrics.pipeline_states.lock().unwrap_or_else(|e| e.into_inner()).remove(&p.name);
                report.stopped.push(p.name.clone());
            }
        }
        *self.pipelines.write().unwrap_or_else(|p| p.into_inner()) = keep;
        self.finish_reload(report)
    }

    fn finish_reload(&self, mut report: ReloadReport) -> ReloadReport {
        report.at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        report.result = if report.errors.is_empty() { "ok".into() } else { "failed".into() };
        let counter = if report.errors.is_empty() { &self.metrics.reloads_ok } else { &self.metrics.reloads_failed };
        counter.fetch_add(1, Relaxed);
        if report.errors.is_empty() {
            tracing::info!(started = ?report.started, replaced = ?report.replaced, stopped = ?report.stopped, "Reloaded.");
        } else {
            tracing::error!(errors = ?report.errors, replaced = ?report.replaced, "Reload left some pipelines as they were.");
        }
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        report
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
