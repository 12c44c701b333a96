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

fn read(s: StrRef) -> String {
    // SAFETY: manifest strings are static in the library, which is never unloaded.
    unsafe { s.as_str().to_owned() }
}

impl Registry {
    /// Scans `dirs` (not recursively) for plugin libraries.
    pub fn discover(dirs: &[PathBuf]) -> Self {
        let mut reg = Registry::default();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                reg.broken.push(Broken { path: dir.clone(), reason: "the plugin directory cannot be read".into() });
                continue;
            };
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_library(p)).collect();
            files.sort();
            for path in files {
                if let Err(reason) = reg.load(&path) {
                    reg.broken.push(Broken { path, reason });
                }
            }
        }
        reg
    }

    fn load(&mut self, path: &Path) -> Result<(), String> {
        // SAFETY: loading a library runs its initialisers; plugin directories are trusted
        // like the host binary itself.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot be loaded: {e}"))?;
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
        });
        let descriptors: &'static [PluginDescriptor] = if manifest.plugin_count == 0 || manifest.plugins.is_null() {
            &[]
        } else {
            // SAFETY: per ABI.md, `plugins` points to `plugin_count` static descriptors.
            unsafe { std::slice::from_raw_parts(manifest.plugins, manifest.plugin_count as usize) }
        };
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
