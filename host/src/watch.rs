//! Reloads when pipeline files change: the pipeline directory is watched, and changes are
//! debounced so an editor's several writes make one reload.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::host::Host;

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(300);

fn is_pipeline_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Starts watching `dir`; returns the watcher, which stops watching when dropped.
pub fn watch(host: Arc<Host>, dir: &Path, drain: Duration) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event {
            if !e.kind.is_access() && e.paths.iter().any(|p| is_pipeline_file(p)) {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("weir-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                // Wait until the directory has been quiet for DEBOUNCE.
                while rx.recv_timeout(DEBOUNCE).is_ok() {}
                tracing::info!("Pipeline files changed: reloading.");
                host.reload(drain);
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}
