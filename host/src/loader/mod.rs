//! Finds plugin libraries, checks their ABI and reads their manifests.
//! Libraries are never unloaded: `dlclose` with thread-local destructors is unsound.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use weir_plugin::abi::{self, EntryFn, Kind, Manifest, OwnedBytes, PluginDescriptor, Status, StrRef};

use crate::error::HostError;

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
    /// Where the code was loaded from: `path`, or for a library rebuilt while the host ran,
    /// a private copy (the same path cannot be loaded twice).
    pub loaded_from: PathBuf,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    #[serde(skip)]
    fingerprint: Fingerprint,
}

/// What tells a rebuilt library file from the one loaded: device, inode, size, mtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fingerprint(u64, u64, u64, i64, i64);

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Fingerprint(m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()),
        Err(_) => Fingerprint::default(),
    }
}

/// A private copy of `path` to load a new version from, in a directory of this process's own.
fn private_copy(path: &Path) -> Result<PathBuf, String> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let dir = std::env::temp_dir().join(format!("weir-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let copy = dir.join(format!("{}-{name}", NEXT.fetch_add(1, Relaxed)));
    std::fs::copy(path, &copy).map_err(|e| format!("cannot copy it to {}: {e}", copy.display()))?;
    Ok(copy)
}

/// A file that is not a usable plugin library, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Broken {
    /// The file.
    pub path: PathBuf,
    /// Why it cannot be used.
    pub reason: String,
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
    /// Scans `dirs` (not recursively) for plugin libraries.
    pub fn discover(dirs: &[PathBuf]) -> Self {
        let mut reg = Registry::default();
        for dir in dirs {
            let Some(files) = library_files(dir) else {
                reg.broken.push(Broken { path: dir.clone(), reason: "the plugin directory cannot be read".into() });
                continue;
            };
            for path in files {
                if let Err(reason) = reg.load(&path, &path) {
                    reg.broken.push(Broken { path, reason });
                }
            }
        }
        reg
    }

    /// Scans `dirs` again for a reload. A library whose file did not change keeps its loaded
    /// code; a new or rebuilt one is loaded (a rebuilt one from a private copy, beside the old
    /// version, which is never unloaded); one that cannot be used is refused, and the version
    /// already loaded, if any, is kept. A library whose file disappeared stays loaded.
    /// Returns the new registry, what was loaded and what was refused.
    pub fn refresh(&self, dirs: &[PathBuf]) -> (Registry, Vec<String>, Vec<String>) {
        let mut reg = Registry::default();
        let (mut loaded, mut refused) = (Vec::new(), Vec::new());
        let mut seen = Vec::new();
        for dir in dirs {
            let Some(files) = library_files(dir) else {
                refused.push(format!("the plugin directory {} cannot be read", dir.display()));
                continue;
            };
            for path in files {
                let old = self.libraries.iter().find(|l| l.path == path);
                seen.push(path.clone());
                if let Some(old) = old.filter(|l| l.fingerprint == fingerprint(&path)) {
                    reg.keep(self, old);
                    continue;
                }
                let from = if old.is_some() { private_copy(&path) } else { Ok(path.clone()) };
                match from.and_then(|from| reg.load(&path, &from)) {
                    Ok(()) => {
                        let l = reg.libraries.last().expect("just loaded");
                        loaded.push(format!("{} {} from {}", l.name, l.version, path.display()));
                    }
                    Err(reason) => match old {
                        Some(old) => {
                            refused.push(format!(
                                "{}: {reason}; the loaded version ({} {}) is kept",
                                path.display(),
                                old.name,
                                old.version
                            ));
                            reg.keep(self, old);
                        }
                        None => reg.broken.push(Broken { path, reason }),
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

    fn load(&mut self, path: &Path, from: &Path) -> Result<(), String> {
        let fingerprint = fingerprint(path);
        // SAFETY: loading a library runs its initialisers; plugin directories are trusted
        // like the host binary itself.
        let lib = unsafe { libloading::Library::new(from) }.map_err(|e| format!("cannot be loaded: {e}"))?;
        // SAFETY: the symbol's type is fixed by the ABI.
        let entry: EntryFn = match unsafe { lib.get::<EntryFn>(abi::ENTRY_SYMBOL) } {
            Ok(sym) => *sym,
            Err(_) => return Err("not a Weir plugin: it has no `weir_plugin_manifest_v1` symbol".into()),
        };
        // Never unloaded, so the manifest's pointers stay valid.
        std::mem::forget(lib);
        // SAFETY: per ABI.md the entry returns a static manifest or null.
        let manifest: &'static Manifest = match unsafe { entry().as_ref() } {
            Some(m) => m,
            None => return Err("its entry symbol returned no manifest".into()),
        };
        let (major, minor) = (manifest.abi_major, manifest.abi_minor);
        if major != abi::ABI_MAJOR || minor > abi::ABI_MINOR {
            let action = if major > abi::ABI_MAJOR || (major == abi::ABI_MAJOR && minor > abi::ABI_MINOR) {
                "upgrade weir, or rebuild the plugin against an older weir-plugin"
            } else {
                "rebuild the plugin against this weir-plugin SDK"
            };
            return Err(format!(
                "{} was built for plugin ABI {major}.{minor}, but this weir speaks ABI {}.{}: {action}",
                path.display(),
                abi::ABI_MAJOR,
                abi::ABI_MINOR
            ));
        }
        if (manifest.struct_size as usize) < std::mem::size_of::<Manifest>() {
            return Err(format!("its manifest is {} bytes, shorter than ABI {major}.{minor} requires", manifest.struct_size));
        }
        let info = Arc::new(LibraryInfo {
            path: path.to_path_buf(),
            name: read(manifest.library_name),
            version: read(manifest.library_version),
            build: read(manifest.build_info),
            abi: format!("{major}.{minor}"),
            loaded_from: from.to_path_buf(),
            loaded_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            fingerprint,
        });
        // Read at the library's own descriptor size, so an older minor's shorter ones work.
        let descriptors = crate::ffi::descriptors(manifest)?;
        let mut found = Vec::new();
        for d in descriptors {
            let name = read(d.name);
            let schema: serde_json::Value =
                serde_json::from_str(&read(d.config_schema)).map_err(|e| format!("plugin {name}: its config schema is not JSON: {e}"))?;
            let complete = match d.kind {
                Kind::SOURCE => d.start.is_some() && d.stop.is_some(),
                Kind::TRANSFORM => d.process.is_some(),
                Kind::SINK => d.process.is_some() && d.stop.is_some(),
                _ => false,
            };
            if !complete {
                return Err(format!("plugin {name}: kind {} lacks the functions it needs", d.kind.0));
            }
            if let Some(prev) = self.plugins.get(&(name.clone(), d.kind.0)) {
                return Err(format!(
                    "{} plugin {name} is also exported by {}; remove one of the two libraries",
                    d.kind.name(),
                    prev.library.path.display()
                ));
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
        Err(HostError::Plugin(format!("unknown {} plugin {name:?}; {}s found: {known}", kind.name(), kind.name())))
    }
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
