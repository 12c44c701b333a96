//! Why a library file is not used: one typed reason per way loading can fail, formatted
//! once, where it is shown (`weir plugins`, the log, a reload's refusals).

use std::fmt;
use std::path::PathBuf;

use super::elf::{self, ElfProblem};

/// Why a plugin library (or a plugin directory) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadProblem {
    /// The plugin directory cannot be listed.
    DirectoryUnreadable,
    /// The file's metadata cannot be read (what the system said).
    Unreadable(String),
    /// Its size or modification time kept changing for `seconds`; `size` bytes now.
    StillWritten {
        /// How long it was watched.
        seconds: u64,
        /// Its size when given up on.
        size: u64,
    },
    /// It changed while it was being copied.
    ChangedWhileCopied,
    /// Its ELF headers do not describe a library this process can map.
    Elf(ElfProblem),
    /// The directory of private copies cannot be created.
    CopiesDirectory {
        /// The directory.
        dir: PathBuf,
        /// What the system said.
        error: String,
    },
    /// The file cannot be copied.
    CannotCopy {
        /// The copy's path.
        copy: PathBuf,
        /// What the system said.
        error: String,
    },
    /// The private copy came out shorter or longer than the file (a full disk).
    CopySize {
        /// The copy's path.
        copy: PathBuf,
        /// Its size.
        size: u64,
        /// The file's size.
        expected: u64,
        /// The directory of private copies.
        dir: PathBuf,
    },
    /// `dlopen` refused it, in dlerror's words (with the file's name, not the copy's).
    Dlopen(String),
    /// It has no entry symbol: not a Weir plugin.
    NoEntrySymbol,
    /// Its entry symbol returned no manifest.
    NoManifest,
    /// Built for another ABI version than this host speaks.
    Abi {
        /// The file.
        path: PathBuf,
        /// The library's ABI `(major, minor)`.
        built: (u16, u16),
    },
    /// Its manifest is shorter than its ABI version's.
    ShortManifest {
        /// The manifest's `struct_size`.
        size: u32,
        /// The library's ABI `(major, minor)`.
        abi: (u16, u16),
    },
    /// Its plugin descriptors are shorter than ABI 1.0's (or misaligned).
    ShortDescriptors {
        /// Their `struct_size`.
        stride: usize,
        /// The least ABI 1.0 needs.
        needed: usize,
    },
    /// A test or example library, loaded only from a directory named explicitly.
    OptIn {
        /// Its crate name.
        name: String,
        /// Its version.
        version: String,
    },
    /// A plugin's config schema is not JSON.
    SchemaNotJson {
        /// The plugin.
        plugin: String,
        /// The JSON error.
        error: String,
    },
    /// A plugin of `kind` lacks functions its kind needs.
    Incomplete {
        /// The plugin.
        plugin: String,
        /// Its kind number.
        kind: u32,
    },
    /// Another library already exports a plugin of that kind and name.
    Duplicate {
        /// `source`, `transform` or `sink`.
        kind: &'static str,
        /// The plugin.
        plugin: String,
        /// The other library.
        other: PathBuf,
    },
}

impl LoadProblem {
    /// Whether looking again later may succeed without the file changing (it was still
    /// being written).
    pub fn transient(&self) -> bool {
        matches!(self, LoadProblem::StillWritten { .. } | LoadProblem::ChangedWhileCopied)
    }
}

impl fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use weir_plugin::abi::{ABI_MAJOR, ABI_MINOR};
        match self {
            LoadProblem::DirectoryUnreadable => f.write_str("the plugin directory cannot be read"),
            LoadProblem::Unreadable(e) => write!(f, "cannot be read: {e}"),
            LoadProblem::StillWritten { seconds, size } => write!(
                f,
                "still being written: its size or modification time kept changing for {seconds} s ({} bytes now); wait for the copy to finish, then reload",
                elf::thousands(*size)
            ),
            LoadProblem::ChangedWhileCopied => {
                f.write_str("still being written: it changed while Weir copied it; wait for the copy to finish, then reload")
            }
            LoadProblem::Elf(problem) => problem.fmt(f),
            LoadProblem::CopiesDirectory { dir, error } => write!(f, "cannot create {}: {error}", dir.display()),
            LoadProblem::CannotCopy { copy, error } => write!(f, "cannot copy it to {}: {error}", copy.display()),
            LoadProblem::CopySize { copy, size, expected, dir } => write!(
                f,
                "its private copy {} has {} bytes instead of {}; check the free space in {}",
                copy.display(),
                elf::thousands(*size),
                elf::thousands(*expected),
                dir.display()
            ),
            LoadProblem::Dlopen(text) => {
                write!(f, "cannot be loaded ({text}); rebuild the plugin, or install the libraries it needs")
            }
            LoadProblem::NoEntrySymbol => {
                f.write_str("not a Weir plugin: it has no `weir_plugin_manifest_v1` symbol; remove it from the plugin directory")
            }
            LoadProblem::NoManifest => f.write_str("its entry symbol returned no manifest"),
            LoadProblem::Abi { path, built: (major, minor) } => {
                let action = if *major > ABI_MAJOR || (*major == ABI_MAJOR && *minor > ABI_MINOR) {
                    "upgrade weir, or rebuild the plugin against an older weir-plugin"
                } else {
                    "rebuild the plugin against this weir-plugin SDK"
                };
                write!(
                    f,
                    "{} was built for plugin ABI {major}.{minor}, but this weir speaks ABI {ABI_MAJOR}.{ABI_MINOR}: {action}",
                    path.display()
                )
            }
            LoadProblem::ShortManifest { size, abi: (major, minor) } => {
                write!(f, "its manifest is {size} bytes, shorter than ABI {major}.{minor} requires")
            }
            LoadProblem::ShortDescriptors { stride, needed } => {
                write!(f, "its plugin descriptors are {stride} bytes; ABI 1.0 needs at least {needed}")
            }
            LoadProblem::OptIn { name, version } => write!(
                f,
                "{name} {version}: a test or example library, loaded only from a plugin directory named with --plugins (or WEIR_PLUGINS, or `plugins:` in weir.yaml), not by default from beside the weir binary"
            ),
            LoadProblem::SchemaNotJson { plugin, error } => write!(f, "plugin {plugin}: its config schema is not JSON: {error}"),
            LoadProblem::Incomplete { plugin, kind } => write!(f, "plugin {plugin}: kind {kind} lacks the functions it needs"),
            LoadProblem::Duplicate { kind, plugin, other } => {
                write!(f, "{kind} plugin {plugin} is also exported by {}; remove one of the two libraries", other.display())
            }
        }
    }
}

impl serde::Serialize for LoadProblem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_file_still_being_written_is_worth_another_look() {
        assert!(LoadProblem::StillWritten { seconds: 5, size: 1000 }.transient());
        assert!(LoadProblem::ChangedWhileCopied.transient());
        assert!(!LoadProblem::NoManifest.transient());
        assert!(!LoadProblem::Elf(ElfProblem::NoProgramHeaders).transient());
    }

    #[test]
    fn an_abi_mismatch_says_which_side_to_change() {
        let newer = LoadProblem::Abi { path: "/p/libx.so".into(), built: (weir_plugin::abi::ABI_MAJOR + 1, 0) };
        assert!(newer.to_string().contains("upgrade weir"), "{newer}");
        let older = LoadProblem::Abi { path: "/p/libx.so".into(), built: (0, 9) };
        assert!(older.to_string().contains("rebuild the plugin against this weir-plugin SDK"), "{older}");
        assert_eq!(serde_json::to_value(&older).unwrap(), serde_json::Value::String(older.to_string()));
    }
}
