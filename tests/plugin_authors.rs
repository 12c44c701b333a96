//! Plugin authors outside this repository: `weir new plugin` writes a crate of each kind into
//! a directory outside the workspace; it builds against this checkout's SDK, passes its own
//! tests as generated, loads into the built `weir` and runs its sample pipeline.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin_dir, json_lines, repo, run_once_with_plugins, weir};

/// Where the generated crates build: one target directory for all of them, kept between runs
/// (the SDK and its dependencies build once), under this checkout's `target/`.
fn authors_target() -> PathBuf {
    bin_dir().parent().expect("target/").join("plugin-authors")
}

/// Runs `cargo ARGS` in `dir` as an author would, in the shared target directory; panics
/// with cargo's output on failure.
fn cargo(dir: &Path, args: &[&str]) {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", authors_target())
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {} failed in {}:\n{}{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `weir new plugin NAME --kind KIND` into `parent/NAME`; returns the crate's directory.
fn scaffold(parent: &Path, name: &str, kind: &str) -> PathBuf {
    let dir = parent.join(name);
    let out = weir(&["new", "plugin", name, "--kind", kind, "--dir", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "weir new plugin: {}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    for file in ["Cargo.toml", "src/lib.rs", "README.md", &format!("pipelines/{name}.yaml")] {
        assert!(dir.join(file).is_file() && listed.contains(file), "{file} written and listed: {listed}");
    }
    // The checkout's lock file pins the versions this machine has (the build is offline);
    // an author's first build resolves them afresh.
    std::fs::copy(repo().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    dir
}

/// Builds and tests the crate in `dir`, then runs its sample pipeline with the built-in
/// plugins and the new library; returns the pipeline directory.
fn build_test_and_run(dir: &Path) -> PathBuf {
    cargo(dir, &["build", "--offline"]);
    cargo(dir, &["test", "--offline"]);
    // As written: formatted as rustfmt would, and nothing for clippy to say.
    cargo(dir, &["fmt", "--check"]);
    cargo(dir, &["clippy", "--offline", "--all-targets", "--", "-D", "warnings"]);
    let pipelines = dir.join("pipelines");
    let (ok, log) = run_once_with_plugins(&pipelines, &authors_target().join("debug"), &dir.join("weir.log"));
    assert!(ok, "weir run --once:\n{log}");
    pipelines
}

#[test]
fn a_generated_source_builds_passes_its_tests_and_runs() {
    let parent = tempfile::tempdir().unwrap();
    assert!(!parent.path().starts_with(repo()), "generated outside the workspace");
    let dir = scaffold(parent.path(), "ticker-src", "source");
    let pipelines = build_test_and_run(&dir);
    let out = json_lines(&pipelines.join("out.jsonl"));
    assert_eq!(out.len(), 1000);
    for (i, record) in out.iter().enumerate() {
        assert_eq!(record, &serde_json::json!({"n": i, "message": "hello"}));
    }
}

#[test]
fn a_generated_transform_builds_passes_its_tests_and_runs() {
    let parent = tempfile::tempdir().unwrap();
    let dir = scaffold(parent.path(), "stamp-xf", "transform");
    let pipelines = build_test_and_run(&dir);
    let input = json_lines(&pipelines.join("input.jsonl"));
    let expected: Vec<serde_json::Value> = input
        .iter()
        .filter_map(|r| r.as_object())
        .map(|o| {
            let mut o = o.clone();
            o.insert("team".into(), "core".into());
            serde_json::Value::Object(o)
        })
        .collect();
    assert_eq!(json_lines(&pipelines.join("out.jsonl")), expected);
    let dead = json_lines(&pipelines.join("dead-letters.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let text = dead[0].to_string();
    assert!(text.contains("not a JSON object") && text.contains("stamp-xf"), "{text}");
}

#[test]
fn a_generated_sink_builds_passes_its_tests_runs_and_shows_its_build() {
    let parent = tempfile::tempdir().unwrap();
    let dir = scaffold(parent.path(), "lines-sink", "sink");
    let pipelines = build_test_and_run(&dir);
    let input = std::fs::read_to_string(pipelines.join("input.jsonl")).unwrap();
    assert_eq!(std::fs::read_to_string(pipelines.join("out.jsonl")).unwrap(), input);

    let libs = authors_target().join("debug");
    let out = weir(&["plugins", "--json", "--plugins", libs.to_str().unwrap()], &[]);
    assert!(out.status.success());
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["format"], 1);
    let lib = listing["libraries"].as_array().unwrap().iter().find(|l| l["name"] == "lines-sink").expect("the new library is listed");
    assert_eq!(lib["version"], "0.1.0");
    let manifest = std::fs::read_to_string(repo().join("plugins/sdk/Cargo.toml")).unwrap();
    let sdk_version = manifest.lines().find_map(|l| l.strip_prefix("version = ")).unwrap().trim_matches('"');
    assert_eq!(lib["sdk"], format!("weir-plugin {sdk_version}"));
    assert_eq!(lib["abi"], listing["host_abi"]);
    assert!(lib["compiler"].as_str().unwrap().starts_with("rustc 1."), "{lib}");
    assert_eq!(lib["profile"], "debug");
    assert_eq!(lib["dir"], libs.to_str().unwrap());
    assert_eq!(
        lib["plugins"],
        serde_json::json!([{"name": "lines-sink", "kind": "sink", "description": "Appends each record to a file, one line each."}])
    );
    assert_eq!(listing["searched"], serde_json::json!([{"dir": libs, "by": "named"}]));
    // The document matches its committed JSON Schema, checked by an independent validator
    // (Python's jsonschema, installed with schemathesis by scripts/deps.sh).
    let check = "import json, sys, jsonschema; jsonschema.validate(json.load(sys.stdin), json.load(open(sys.argv[1])))";
    let mut python = Command::new("python3")
        .args(["-c", check])
        .arg(repo().join("schemas/plugins-listing.schema.json"))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut python.stdin.take().unwrap(), &out.stdout).unwrap();
    let checked = python.wait_with_output().unwrap();
    assert!(checked.status.success(), "weir plugins --json does not match its schema: {}", String::from_utf8_lossy(&checked.stderr));
}

#[test]
fn a_name_that_cannot_name_a_plugin_and_a_used_directory_are_refused() {
    let parent = tempfile::tempdir().unwrap();
    let out = weir(&["new", "plugin", "My Sink", "--kind", "sink", "--dir", parent.path().join("x").to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("use lowercase letters"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(parent.path().join("mine.txt"), "keep").unwrap();
    let out = weir(&["new", "plugin", "ok-sink", "--kind", "sink", "--dir", parent.path().to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(parent.path().join("mine.txt")).unwrap(), "keep");
}
