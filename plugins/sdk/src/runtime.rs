//! The plugin library's own async runtime, created on first use.
//!
//! Each plugin library has its own copy of every global, tokio included, so a plugin never
//! uses the host's runtime: it calls [`runtime`] and spawns its tasks there.

use std::sync::OnceLock;
use tokio::runtime::Runtime;

/// Worker threads of the library's runtime unless `WEIR_PLUGIN_THREADS` says otherwise.
const DEFAULT_THREADS: usize = 2;

/// The library's multi-threaded tokio runtime, created on first call.
///
/// # Panics
/// When the operating system refuses to start threads.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let threads = std::env::var("WEIR_PLUGIN_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_THREADS);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("weir-plugin")
            .enable_all()
            .build()
            .expect("the operating system refused to start the plugin runtime's threads")
    })
}
