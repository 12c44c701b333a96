//! A plugin written in plain C against the generated header (`examples/c-transform`),
//! compiled with `cc` here and run by the built `weir`: it transforms, rejects a record with
//! a reason, and a batch it fails with a FATAL status fails while the host carries on.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin_dir, json_lines, repo, run_once_with_plugins, weir};

/// Compiles the example into `dir` with the strictest warnings; returns the library.
fn compile(dir: &Path) -> PathBuf {
    let lib = dir.join("libc_stamp.so");
    let out = Command::new("cc")
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC", "-I"])
        .arg(repo().join("plugins/sdk/include"))
        .arg("-o")
        .arg(&lib)
        .arg(repo().join("examples/c-transform/c_stamp.c"))
        .output()
        .expect("cc runs");
    assert!(out.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&out.stderr));
    lib
}

/// `weir run --once` over `pipelines` with the built-in plugins and the C library in `libs`.
fn run_once(pipelines: &Path, libs: &Path) -> (bool, String) {
    run_once_with_plugins(pipelines, libs, &pipelines.join("weir.log"))
}

/// What c-stamp should make of `line`, worked out here: `None` when rejected.
fn expected(line: &str, max_bytes: usize) -> Option<serde_json::Value> {
    if line.len() > max_bytes {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    if let Some(o) = v.as_object_mut() {
        o.insert("stamped_by".into(), "c-stamp".into());
    }
    Some(v)
}

#[test]
fn the_c_transform_stamps_rejects_and_reports_its_build() {
    let libs = tempfile::tempdir().unwrap();
    compile(libs.path());
    let dir = tempfile::tempdir().unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    for f in ["stamp.yaml", "input.jsonl"] {
        std::fs::copy(repo().join("examples/c-transform/pipelines").join(f), pipelines.join(f)).unwrap();
    }
    let (ok, log) = run_once(&pipelines, libs.path());
    assert!(ok, "{log}");
    assert!(log.contains("c-stamp ready: max_bytes 64, fail_on set"), "the plugin logs through the host: {log}");

    let input = std::fs::read_to_string(pipelines.join("input.jsonl")).unwrap();
    let want: Vec<serde_json::Value> = input.lines().filter_map(|l| expected(l, 64)).collect();
    assert_eq!(want.len(), 4, "the sample has one record over 64 bytes");
    assert_eq!(json_lines(&pipelines.join("out.jsonl")), want);
    let raw = std::fs::read_to_string(pipelines.join("out.jsonl")).unwrap();
    assert!(raw.starts_with("{\"stamped_by\":\"c-stamp\",\"id\":1"), "stamped first, the rest as written: {raw}");
    let dead = json_lines(&pipelines.join("dead-letters.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let text = dead[0].to_string();
    assert!(text.contains("record of 79 bytes is over max_bytes 64"), "{text}");

    let listed = weir(&["plugins", "--json", "--plugins", libs.path().to_str().unwrap()], &[]);
    let listing: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let lib = &listing["libraries"][0];
    assert_eq!(lib["name"], "c-stamp");
    assert_eq!(lib["abi"], listing["host_abi"], "built from the current header");
    assert_eq!(lib["sdk"], serde_json::Value::Null, "no SDK");
    assert!(lib["compiler"].as_str().unwrap().starts_with("cc "), "{lib}");
    assert_eq!(lib["opt_in"], true);
    assert_eq!(lib["plugins"][0]["kind"], "transform");
}

#[test]
fn a_batch_the_c_transform_fails_is_failed_and_the_host_carries_on() {
    let libs = tempfile::tempdir().unwrap();
    compile(libs.path());
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> =
        (0..6).map(|i| if i == 2 { r#"{"id":2,"note":"poison"}"#.to_owned() } else { format!(r#"{{"id":{i}}}"#) }).collect();
    std::fs::write(dir.path().join("input.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(
        dir.path().join("fail.yaml"),
        "source: {name: input, plugin: file, config: {path: input.jsonl, batch_size: 2}}\n\
         transforms: [{plugin: c-stamp, config: {max_bytes: 1000, fail_on: poison}}]\n\
         sinks: [{plugin: file, config: {path: out.jsonl}}]\n\
         dead_letter: {plugin: file, config: {path: dead-letters.jsonl}}\n",
    )
    .unwrap();
    let (_, log) = run_once(dir.path(), libs.path());
    assert!(log.contains(r#"record 0 contains "poison": c-stamp fails the whole batch"#), "the plugin's message is logged: {log}");
    // Batches 1 and 3 went through; batch 2 (ids 2 and 3) failed as a whole.
    let ids: Vec<i64> = json_lines(&dir.path().join("out.jsonl")).iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [0, 1, 4, 5], "{log}");
    let dead = json_lines(&dir.path().join("dead-letters.jsonl"));
    let dead_text = serde_json::to_string(&dead).unwrap();
    assert_eq!(dead.len(), 2, "the failed batch's two records are dead letters: {dead_text}");
    assert!(dead_text.contains("poison"), "{dead_text}");
}

#[test]
fn a_wrong_config_is_refused_at_its_field() {
    let libs = tempfile::tempdir().unwrap();
    compile(libs.path());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "source: {name: input, plugin: file, config: {path: input.jsonl}}\n\
         transforms:\n  - plugin: c-stamp\n    config:\n      max_bytes: 10\n      fail_on: 'a\\b'\n\
         sinks: [{plugin: file, config: {path: out.jsonl}}]\n",
    )
    .unwrap();
    let builtin = bin_dir();
    let out = weir(
        &[
            "validate",
            dir.path().join("bad.yaml").to_str().unwrap(),
            "--plugins",
            builtin.to_str().unwrap(),
            "--plugins",
            libs.path().to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.yaml:6:") && err.contains("fail_on: write it as plain text, without escapes"), "{err}");
}
