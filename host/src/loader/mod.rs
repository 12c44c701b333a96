//! Finds plugin libraries, checks their ABI and reads their manifests.
//! Libraries are never unloaded: `dlclose` with thread-local destructors is unsound.
//!
//! Before a library is mapped, its file must have settled, is copied to a directory of this
//! process's own, and the copy's ELF headers are checked against its size ([`files`],
//! [`elf`]): a file cut short would otherwise be a SIGBUS, not an error.
#![allow(unsafe_code)]

pub mod elf;
pub mod files;
pub mod listing;
mod problem;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use weir_plugin::abi::{self, EntryFn, Kind, Manifest, OwnedBytes, PluginDescriptor, Status, StrRef};

use crate::config::HostConfig;
use crate::error::HostError;
use files::{fingerprint, Fingerprint};
pub use files::{remove_private_copies, remove_stale_copies};
pub use problem::LoadProblem;

/// A plugin one library exports.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// Source, transform or sink.
    pub kind: Kind,
    /// Name used in pipeline files.
    pub name: String,
    /// One line.
    pub description: String,
    /// JSON Schema of its config.
    pub schema: serde_json::Value,
    /// The library it comes from.
    pub library: Arc<LibraryInfo>,
    /// Its descriptor, valid for the life of the process.
    pub descriptor: &'static PluginDescriptor,
}

/// What `weir plugins` shows of a library.
#[derive(Debug, Clone, Serialize)]
pub struct LibraryInfo {
    /// Where it was found.
    pub path: PathBuf,
    /// Its crate name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// SDK and build information.
    pub build: String,
    /// ABI it was built for, `major.minor`.
    pub abi: String,
    /// Whether it is a test or example library, loaded only from a directory the user named.
    pub opt_in: bool,
    /// Where the code was loaded from: a private copy of `path` under
    /// `$TMPDIR/weir-plugins-<pid>` (so the mapped file cannot change under the process, and
    /// a rebuilt library can be loaded beside the old version).
    pub loaded_from: PathBuf,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    #[serde(skip)]
    fingerprint: Fingerprint,
}

/// A file that is not a usable plugin library, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Broken {
    /// The file.
    pub path: PathBuf,
    /// Why it cannot be used.
    pub reason: LoadProblem,
    /// The file as it was looked at: a reload tries it again only once it changed.
    #[serde(skip)]
    fingerprint: Fingerprint,
}

impl Broken {
    fn new(path: PathBuf, reason: LoadProblem) -> Self {
        let fingerprint = fingerprint(&path);
        Broken { path, reason, fingerprint }
    }
}

/// Why [`Registry::load`] did not add a library.
enum Unused {
    /// It cannot be used.
    Broken(Box<Broken>),
    /// An opt-in library (tests, examples) in a directory that was not named explicitly.
    Skipped(Box<Broken>),
}

/// Every plugin found.
#[derive(Debug, Default)]
pub struct Registry {
    /// Usable plugins by name and kind (a source and a sink may share a name).
    pub plugins: BTreeMap<(String, u32), Plugin>,
    /// Usable libraries.
    pub libraries: Vec<Arc<LibraryInfo>>,
    /// Files that could not be used.
    pub broken: Vec<Broken>,
    /// Opt-in libraries (test and example plugins) found in the default plugin directory
    /// and not loaded, with the reason.
    pub skipped: Vec<Broken>,
    /// Whether the plugin directories were named explicitly (`--plugins`, `WEIR_PLUGINS`,
    /// `plugins:`); only then are opt-in libraries loaded.
    explicit: bool,
}

fn is_library(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("so" | "dylib" | "dll"))
}

/// The library files directly in `dir`, sorted; `None` when it cannot be read.
fn library_files(dir: &Path) -> Option<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_library(p)).collect();
    files.sort();
    Some(files)
}

fn read(s: StrRef) -> String {
    // SAFETY: manifest strings are static in the library, which is never unloaded.
    unsafe { s.as_str().to_owned() }
}

impl Registry {
    /// Scans the plugin directories of `config` (the default one, beside the `weir`
    /// executable, leaves opt-in libraries out).
    pub fn for_config(config: &HostConfig) -> Self {
        Self::discover(&config.plugin_dirs(), !config.plugins.is_empty())
    }

    /// Scans `dirs` (not recursively) for plugin libraries. Opt-in libraries (test and
    /// example plugins) are loaded only when `explicit` (the directories were named by the
    /// user); otherwise they are listed in `skipped`.
    pub fn discover(dirs: &[PathBuf], explicit: bool) -> Self {
        let mut reg = Registry { explicit, ..Registry::default() };
        for dir in dirs {
            let Some(files) = library_files(dir) else {
                reg.broken.push(Broken::new(dir.clone(), LoadProblem::DirectoryUnreadable));
                continue;
            };
            for path in files {
                match reg.load(&path) {
                    Ok(()) => {}
                    Err(Unused::Broken(b)) => reg.broken.push(*b),
                    Err(Unused::Skipped(b)) => reg.skipped.push(*b),
                }
            }
        }
        reg
    }

    /// Scans `dirs` again for a reload. A library whose file did not change keeps its loaded
    /// code; a new or rebuilt one is loaded (from a new private copy; a rebuilt one beside the
    /// old version, which is never unloaded); one that cannot be used is refused, and the
    /// version already loaded, if any, is kept. A library whose file disappeared stays loaded.
    /// A file that could not be used and did not change since is not tried again (nor
    /// reported again); one that was still being written is.
    /// Returns the new registry, what was loaded and what was refused.
    pub fn refresh(&self, dirs: &[PathBuf]) -> (Registry, Vec<String>, Vec<String>) {
        let mut reg = Registry { explicit: self.explicit, ..Registry::default() };
        let (mut loaded, mut refused) = (Vec::new(), Vec::new());
        let mut seen = Vec::new();
        for dir in dirs {
            let Some(files) = library_files(dir) else {
                refused.push(format!("{}: {}", dir.display(), LoadProblem::DirectoryUnreadable));
                continue;
            };
            for path in files {
                let old = self.libraries.iter().find(|l| l.path == path);
                seen.push(path.clone());
                let now = fingerprint(&path);
                if let Some(old) = old.filter(|l| l.fingerprint == now) {
                    reg.keep(self, old);
                    continue;
                }
                let same = |b: &&Broken| b.path == path && b.fingerprint == now && !b.reason.transient();
                if let Some(b) = self.skipped.iter().find(same) {
                    reg.skipped.push(b.clone());
                    continue;
                }
                if let Some(b) = self.broken.iter().find(same) {
                    // Reported when it appeared; an older version may still be loaded.
                    reg.broken.push(b.clone());
                    if let Some(old) = old {
                        reg.keep(self, old);
                    }
                    continue;
                }
                match reg.load(&path) {
                    Ok(()) => {
                        let l = reg.libraries.last().expect("just loaded");
                        loaded.push(format!("{} {} from {}", l.name, l.version, path.display()));
                    }
                    Err(Unused::Skipped(b)) => reg.skipped.push(*b),
                    Err(Unused::Broken(b)) => match old {
                        Some(old) => {
                            refused.push(format!(
                                "{}: {}; the loaded version ({} {}) is kept",
                                path.display(),
                                b.reason,
                                old.name,
                                old.version
                            ));
                            reg.keep(self, old);
                            reg.broken.push(*b);
                        }
                        None => {
                            refused.push(format!("{}: {}", path.display(), b.reason));
                            reg.broken.push(*b);
                        }
                    },
                }
            }
        }
        for old in self.libraries.iter().filter(|l| !seen.contains(&l.path)) {
            reg.keep(self, old);
        }
        (reg, loaded, refused)
    }

    /// Carries a loaded library and its plugins over from `from`, unless another library
    /// now exports one of its plugins.
    fn keep(&mut self, from: &Registry, lib: &Arc<LibraryInfo>) {
        let plugins: Vec<&Plugin> = from.plugins.values().filter(|p| Arc::ptr_eq(&p.library, lib)).collect();
        if plugins.iter().any(|p| self.plugins.contains_key(&(p.name.clone(), p.kind.0))) {
            return;
        }
        for p in plugins {
            self.plugins.insert((p.name.clone(), p.kind.0), p.clone());
        }
        self.libraries.push(lib.clone());
    }

    /// Loads the library at `path` from a checked private copy, unless it cannot be used.
    fn load(&mut self, path: &Path) -> Result<(), Unused> {
        let (from, print) =
            files::private_copy(path).map_err(|problem| Unused::Broken(Box::new(Broken::new(path.to_path_buf(), problem))))?;
        let result = self.load_copy(path, &from, print);
        if result.is_err() {
            // Unlinking is safe even when the copy was mapped; it is just not needed.
            let _ = std::fs::remove_file(&from);
        }
        result
    }

    /// Maps `from`, the checked copy of `path`, and reads its manifest.
    fn load_copy(&mut self, path: &Path, from: &Path, fingerprint: Fingerprint) -> Result<(), Unused> {
        let broken = |reason: LoadProblem| Box::new(Broken { path: path.to_path_buf(), reason, fingerprint });
        let bad = |reason: LoadProblem| Unused::Broken(broken(reason));
        // SAFETY: loading a library runs its initialisers; plugin directories are trusted
        // like the host binary itself. The file is a private copy whose ELF headers were
        // checked against its size, so mapping it cannot fault.
        let lib = unsafe { libloading::Library::new(from) }.map_err(|e| bad(dlopen_reason(&e, path, from)))?;
        // SAFETY: the symbol's type is fixed by the ABI.
        let entry: EntryFn = match unsafe { lib.get::<EntryFn>(abi::ENTRY_SYMBOL) } {
            Ok(sym) => *sym,
            Err(_) => return Err(bad(LoadProblem::NoEntrySymbol)),
        };
        // Never unloaded, so the manifest's pointers stay valid.
        std::mem::forget(lib);
        // SAFETY: per ABI.md the entry returns a static manifest or null.
        let manifest: &'static Manifest = match unsafe { entry().as_ref() } {
            Some(m) => m,
            None => return Err(bad(LoadProblem::NoManifest)),
        };
        let (major, minor) = (manifest.abi_major, manifest.abi_minor);
        if major != abi::ABI_MAJOR || minor > abi::ABI_MINOR {
            return Err(bad(LoadProblem::Abi { path: path.to_path_buf(), built: (major, minor) }));
        }
        if (manifest.struct_size as usize) < Manifest::MINOR_0_SIZE {
            return Err(bad(LoadProblem::ShortManifest { size: manifest.struct_size, abi: (major, minor) }));
        }
        if !self.explicit && manifest.flags() & abi::LIBRARY_OPT_IN != 0 {
            let (name, version) = (read(manifest.library_name), read(manifest.library_version));
            return Err(Unused::Skipped(broken(LoadProblem::OptIn { name, version })));
        }
        let info = Arc::new(LibraryInfo {
            path: path.to_path_buf(),
            name: read(manifest.library_name),
            version: read(manifest.library_version),
            build: read(manifest.build_info),
            abi: format!("{major}.{minor}"),
            opt_in: manifest.flags() & abi::LIBRARY_OPT_IN != 0,
            loaded_from: from.to_path_buf(),
            loaded_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            fingerprint,
        });
        // Read at the library's own descriptor size, so an older minor's shorter ones work.
        let descriptors = crate::ffi::descriptors(manifest).map_err(bad)?;
        let mut found = Vec::new();
        for d in descriptors {
            let name = read(d.name);
            let schema: serde_json::Value = serde_json::from_str(&read(d.config_schema))
                .map_err(|e| bad(LoadProblem::SchemaNotJson { plugin: name.clone(), error: e.to_string() }))?;
            let complete = match d.kind {
                Kind::SOURCE => d.start.is_some() && d.stop.is_some(),
                Kind::TRANSFORM => d.process.is_some(),
                Kind::SINK => d.process.is_some() && d.stop.is_some(),
                _ => false,
            };
            if !complete {
                return Err(bad(LoadProblem::Incomplete { plugin: name, kind: d.kind.0 }));
            }
            if let Some(prev) = self.plugins.get(&(name.clone(), d.kind.0)) {
                return Err(bad(LoadProblem::Duplicate { kind: d.kind.name(), plugin: name, other: prev.library.path.clone() }));
            }
            found.push(Plugin { kind: d.kind, name, description: read(d.description), schema, library: info.clone(), descriptor: d });
        }
        for p in found {
            self.plugins.insert((p.name.clone(), p.kind.0), p);
        }
        self.libraries.push(info);
        Ok(())
    }

    /// The plugin of `kind` called `name`, or an error that says what was found instead.
    pub fn get(&self, name: &str, kind: Kind) -> Result<&Plugin, HostError> {
        if let Some(p) = self.plugins.get(&(name.to_owned(), kind.0)) {
            return Ok(p);
        }
        if let Some(other) = self.plugins.values().find(|p| p.name == name) {
            return Err(HostError::Plugin(format!(
                "plugin {name:?} is a {}, but this position needs a {}",
                other.kind.name(),
                kind.name()
            )));
        }
        let mut known: Vec<&str> = self.plugins.values().filter(|p| p.kind == kind).map(|p| p.name.as_str()).collect();
        known.dedup();
        let known = if known.is_empty() { "none; check --plugins".to_owned() } else { known.join(", ") };
        let unusable = match self.broken.len() + self.skipped.len() {
            0 => String::new(),
            n => format!(" ({n} library file(s) not loaded, see `weir plugins`)"),
        };
        Err(HostError::Plugin(format!("unknown {} plugin {name:?}; {}s found: {known}{unusable}", kind.name(), kind.name())))
    }
}

/// Why `dlopen` refused `from` (the copy of `path`), in dlerror's own words, which libloading
/// keeps in the error's source; the copy's name is replaced by the file's.
fn dlopen_reason(e: &libloading::Error, path: &Path, from: &Path) -> LoadProblem {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    LoadProblem::Dlopen(text.replace(&from.display().to_string(), &path.display().to_string()))
}

impl Plugin {
    /// Runs the plugin's own config check (no I/O).
    pub fn validate(&self, config_json: &str) -> Result<(), String> {
        let mut message = OwnedBytes::EMPTY;
        // SAFETY: per ABI.md.
        let status = unsafe { (self.descriptor.validate)(StrRef::new(config_json), &mut message) };
        // SAFETY: filled by the plugin or empty.
        let text = unsafe { abi::take_owned_string(&mut message) };
        if status == Status::OK {
            Ok(())
        } else {
            Err(if text.is_empty() { format!("rejected ({})", status.name()) } else { text })
        }
    }
}
