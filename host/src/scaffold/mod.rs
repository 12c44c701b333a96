//! `weir new plugin`: writes a plugin crate that builds, passes its tests and runs in a
//! pipeline as generated (a config struct with docs, the trait implementation, mock-host
//! unit tests, a sample pipeline and a README with the commands to build, test and load it).

use std::path::{Path, PathBuf};

use crate::error::HostError;

/// The kind of plugin to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Produces records (`source:`).
    Source,
    /// Turns batches into batches (`transforms:`).
    Transform,
    /// Delivers records (`sinks:`).
    Sink,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Transform => "transform",
            Kind::Sink => "sink",
        }
    }

    fn code(self) -> &'static str {
        match self {
            Kind::Source => include_str!("templates/source.rs"),
            Kind::Transform => include_str!("templates/transform.rs"),
            Kind::Sink => include_str!("templates/sink.rs"),
        }
    }

    fn pipeline(self) -> &'static str {
        match self {
            Kind::Source => include_str!("templates/source.yaml"),
            Kind::Transform => include_str!("templates/transform.yaml"),
            Kind::Sink => include_str!("templates/sink.yaml"),
        }
    }
}

/// Where the generated crate takes the SDK from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sdk {
    /// A checkout's `plugins/sdk` directory.
    Path(PathBuf),
    /// A version requirement on the registry.
    Version(String),
}

impl Sdk {
    /// The SDK this `weir` was built with: its source directory when it is still there
    /// (a checkout), else its version from the registry.
    pub fn this_build() -> Sdk {
        Sdk::checkout(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk"))
            .unwrap_or_else(|| Sdk::Version(weir_plugin::VERSION.to_owned()))
    }

    /// `PATH` (a directory holding the SDK's Cargo.toml) or a version requirement.
    pub fn parse(text: &str) -> Sdk {
        Sdk::checkout(Path::new(text)).unwrap_or_else(|| Sdk::Version(text.to_owned()))
    }

    /// The SDK's source at `dir`, when its Cargo.toml is there.
    fn checkout(dir: &Path) -> Option<Sdk> {
        dir.join("Cargo.toml").is_file().then(|| Sdk::Path(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())))
    }

    fn dependency(&self) -> String {
        match self {
            Sdk::Path(p) => format!("weir-plugin = {{ path = {:?} }}", p.display().to_string()),
            Sdk::Version(v) => format!("weir-plugin = {v:?}"),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request {
    /// The plugin's name in pipeline files; also the crate's name.
    pub name: String,
    /// Source, transform or sink.
    pub kind: Kind,
    /// The new crate's directory (must not exist, or be empty).
    pub dir: PathBuf,
    /// Where the crate takes the SDK from.
    pub sdk: Sdk,
}

/// Checks a plugin name: lowercase ASCII letters, digits, `-` and `_`, starting with a
/// letter, at most 64 characters (a name in pipeline files, a crate name and a file name).
pub fn check_name(name: &str) -> Result<(), HostError> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    match ok {
        true => Ok(()),
        false => Err(HostError::Usage(format!(
            "`{name}` cannot name a plugin: use lowercase letters, digits, `-` and `_`, starting with a letter (at most 64), e.g. `my-sink`"
        ))),
    }
}

/// `my-sink` → `MySink`.
fn type_name(name: &str) -> String {
    name.split(['-', '_']).filter(|p| !p.is_empty()).map(|p| p[..1].to_ascii_uppercase() + &p[1..]).collect()
}

/// The files of the crate, by path relative to its directory.
fn files(req: &Request) -> Vec<(&'static str, String)> {
    let lib = req.name.replace('-', "_");
    let sample_note = match req.kind {
        Kind::Source => "",
        Kind::Transform => " on `pipelines/input.jsonl` (it rejects one record, which lands in the dead letters)",
        Kind::Sink => " on `pipelines/input.jsonl`",
    };
    let fill = |text: &str| {
        text.replace("__CRATE__", &req.name)
            .replace("__NAME__", &req.name)
            .replace("__TYPE__", &type_name(&req.name))
            .replace("__KIND__", req.kind.name())
            .replace("__LIB__", &lib)
            .replace("__METRIC__", &lib)
            .replace("__SDK__", &req.sdk.dependency())
            .replace("__SAMPLE_NOTE__", sample_note)
    };
    let mut files = vec![
        ("Cargo.toml", fill(include_str!("templates/Cargo.toml.in"))),
        ("src/lib.rs", fill(req.kind.code())),
        ("README.md", fill(include_str!("templates/README.md"))),
        ("pipelines/PIPELINE.yaml", fill(req.kind.pipeline())),
        (".gitignore", "/target\n/pipelines/out.jsonl\n/pipelines/dead-letters.jsonl\n".to_owned()),
    ];
    if req.kind != Kind::Source {
        files.push(("pipelines/input.jsonl", include_str!("templates/input.jsonl").to_owned()));
    }
    files
}

/// Writes the crate; returns the files written.
pub fn generate(req: &Request) -> Result<Vec<PathBuf>, HostError> {
    check_name(&req.name)?;
    if req.dir.exists() && std::fs::read_dir(&req.dir)?.next().is_some() {
        return Err(HostError::Usage(format!(
            "{} exists and is not empty: name a new directory with --dir, or remove it",
            req.dir.display()
        )));
    }
    let mut written = Vec::new();
    for (rel, text) in files(req) {
        let rel = rel.replace("PIPELINE", &req.name);
        let path = req.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        written.push(path);
    }
    // The templates are laid out as rustfmt lays them out with a short name; a longer name
    // moves line breaks, so the code is formatted once more where rustfmt is installed
    // (the code is the same either way).
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2021"])
        .arg(req.dir.join("src/lib.rs"))
        .current_dir(&req.dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: Kind) -> Request {
        Request { name: "my-plugin".into(), kind, dir: PathBuf::from("/nowhere"), sdk: Sdk::Version("0.1".into()) }
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "my-sink", "s3_archive2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "My", "1sink", "my sink", "../x", "é", &"x".repeat(65)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("lowercase letters"), "{bad}: {e}");
        }
        assert_eq!(type_name("my-s3_sink"), "MyS3Sink");
    }

    #[test]
    fn every_placeholder_is_filled() {
        for kind in [Kind::Source, Kind::Transform, Kind::Sink] {
            for (path, text) in files(&request(kind)) {
                assert!(!text.contains("__"), "{kind:?} {path}: {}", text.lines().find(|l| l.contains("__")).unwrap());
            }
            let files = files(&request(kind));
            let manifest = &files.iter().find(|(p, _)| *p == "Cargo.toml").unwrap().1;
            assert!(manifest.contains("name = \"my-plugin\"") && manifest.contains("weir-plugin = \"0.1\""), "{manifest}");
            let code = &files.iter().find(|(p, _)| *p == "src/lib.rs").unwrap().1;
            assert!(code.contains("pub struct MyPlugin ") && code.contains("const NAME: &'static str = \"my-plugin\";"));
        }
    }

    #[test]
    fn a_directory_with_files_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let req = Request { dir: dir.path().to_path_buf(), ..request(Kind::Sink) };
        let e = generate(&req).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn paths_in_the_manifest_are_quoted() {
        let sdk = Sdk::Path(PathBuf::from("/a \"b\"/sdk"));
        assert_eq!(sdk.dependency(), r#"weir-plugin = { path = "/a \"b\"/sdk" }"#);
    }
}
