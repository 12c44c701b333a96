//! What `weir plugins --json` prints: a stable document (its layout is versioned by
//! `format`, its JSON Schema is `schemas/plugins.schema.json`).

use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;
use weir_plugin::abi;

use super::{LibraryInfo, Registry};
use crate::config::HostConfig;

/// The layout version of [`Listing`]. Within a version, members may be added; none is removed
/// or changes its meaning.
pub const FORMAT: u32 = 1;

/// The plugin libraries a host finds, as `weir plugins --json` prints them.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Listing {
    /// The layout version of this document (1): members may be added within a version,
    /// none is removed or changes its meaning.
    pub format: u32,
    /// This host's plugin ABI, `major.minor`: it loads libraries built for the same major
    /// and this or an older minor.
    pub host_abi: String,
    /// The directories searched, in order.
    pub searched: Vec<Searched>,
    /// The libraries loaded, with their plugins.
    pub libraries: Vec<Library>,
    /// Files found that cannot be used, with the reason.
    pub broken: Vec<Unusable>,
    /// Test and example libraries (opt-in) in a directory the user did not name: not loaded.
    pub skipped: Vec<Unusable>,
}

/// A directory searched for libraries.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Searched {
    /// The directory.
    pub dir: PathBuf,
    /// `named`: given by `--plugins`, `WEIR_PLUGINS` or `plugins:` in weir.yaml;
    /// `default`: the directory of the weir executable.
    pub by: String,
}

/// A loaded library.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Library {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The directory it was found in (one of `searched`).
    pub dir: PathBuf,
    /// The file's size in bytes.
    pub size: u64,
    /// When the file was last written (RFC 3339), if known.
    pub modified: Option<String>,
    /// The library's name (for an SDK-built library, its crate name).
    pub name: String,
    /// The library's version.
    pub version: String,
    /// The ABI it was built for, `major.minor`.
    pub abi: String,
    /// The SDK it was built with and its version (`weir-plugin 0.1.0`), when it says.
    pub sdk: Option<String>,
    /// The compiler that built it (`rustc 1.95.0 …`, `cc …`), when it says.
    pub compiler: Option<String>,
    /// The target it was built for (`x86_64-unknown-linux-gnu`), when it says.
    pub target: Option<String>,
    /// `debug` or `release`, when it says.
    pub profile: Option<String>,
    /// The library's build information as it gave it (`key=value` pairs separated by `; `
    /// for SDK-built libraries, free text otherwise).
    pub build: String,
    /// A test or example library, loaded only from a directory the user named.
    pub opt_in: bool,
    /// When this process loaded it (RFC 3339).
    pub loaded_at: String,
    /// The plugins it exports.
    pub plugins: Vec<Entry>,
}

/// A plugin a library exports.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Entry {
    /// The name in pipeline files (`plugin: NAME`).
    pub name: String,
    /// `source`, `transform` or `sink`.
    pub kind: String,
    /// One line.
    pub description: String,
}

/// A file that is not loaded, and why.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Unusable {
    /// The file.
    pub path: PathBuf,
    /// Why it is not loaded, and what to do.
    pub reason: String,
}

/// The value of `key` in build information written as `key=value; key=value`.
pub fn build_field(build: &str, key: &str) -> Option<String> {
    build.split("; ").find_map(|pair| pair.split_once('=').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_owned()))
}

impl Listing {
    /// The listing of `registry`, found with `config`'s plugin directories.
    pub fn new(registry: &Registry, config: &HostConfig) -> Listing {
        let by = if config.plugins.is_empty() { "default" } else { "named" };
        let library = |l: &Arc<LibraryInfo>| {
            let meta = std::fs::metadata(&l.path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok()).map(|t| humantime::format_rfc3339_seconds(t).to_string());
            let plugins = registry
                .plugins
                .values()
                .filter(|p| Arc::ptr_eq(&p.library, l))
                .map(|p| Entry { name: p.name.clone(), kind: p.kind.name().to_owned(), description: p.description.clone() })
                .collect();
            // Libraries before SDK 0.1's build fields said `weir-plugin VERSION` and no more.
            let sdk = build_field(&l.build, "sdk").or_else(|| l.build.starts_with("weir-plugin ").then(|| l.build.clone()));
            Library {
                path: l.path.clone(),
                dir: l.path.parent().map(PathBuf::from).unwrap_or_default(),
                size: meta.map(|m| m.len()).unwrap_or(0),
                modified,
                name: l.name.clone(),
                version: l.version.clone(),
                abi: l.abi.clone(),
                sdk,
                compiler: build_field(&l.build, "compiler"),
                target: build_field(&l.build, "target"),
                profile: build_field(&l.build, "profile"),
                build: l.build.clone(),
                opt_in: l.opt_in,
                loaded_at: l.loaded_at.clone(),
                plugins,
            }
        };
        let unusable = |b: &super::Broken| Unusable { path: b.path.clone(), reason: b.reason.to_string() };
        Listing {
            format: FORMAT,
            host_abi: format!("{}.{}", abi::ABI_MAJOR, abi::ABI_MINOR),
            searched: config.plugin_dirs().into_iter().map(|dir| Searched { dir, by: by.to_owned() }).collect(),
            libraries: registry.libraries.iter().map(library).collect(),
            broken: registry.broken.iter().map(unusable).collect(),
            skipped: registry.skipped.iter().map(unusable).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_fields_are_read_by_key() {
        let build = "sdk=weir-plugin 0.1.0; compiler=rustc 1.95.0 (59807616e 2026-04-14); target=x86_64-unknown-linux-gnu; profile=release";
        assert_eq!(build_field(build, "sdk").as_deref(), Some("weir-plugin 0.1.0"));
        assert_eq!(build_field(build, "compiler").as_deref(), Some("rustc 1.95.0 (59807616e 2026-04-14)"));
        assert_eq!(build_field(build, "profile").as_deref(), Some("release"));
        assert_eq!(build_field(build, "missing"), None);
        assert_eq!(build_field("free text", "sdk"), None);
    }
}
