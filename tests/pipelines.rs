//! Pipeline fixture cases, one directory each under `tests/pipelines/`, found by this one
//! runner: `pipeline.yaml` replays `input.jsonl` with the `file` source through real
//! transforms into `file` sinks writing under `${CASE_OUT}`: `output.jsonl`, and
//! `dead_letters.jsonl` for the dead-letter sink. `expected.jsonl` (and
//! `expected_dead_letters.jsonl`) say what must arrive there, in order, one line per record.
//! Each expected line is matched as a subset of the line written: its fields must be there
//! with those values (objects compared the same way, arrays and scalars exactly, numbers
//! by value); fields it leaves out may hold anything, and `"*"` stands for any value that
//! is present (a receive time, a generated id). `weir run --once` runs each case to its end.
//!
//! To add a case, make a directory with those files; nothing here changes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{free_port, json_lines, repo, weir_until_done};
use serde_json::Value;

/// Why `actual` does not hold `expected`, with the pointer where they part.
fn mismatch(expected: &Value, actual: &Value, at: &str) -> Option<String> {
    match (expected, actual) {
        (Value::String(s), _) if s == "*" => None,
        (Value::Object(want), Value::Object(got)) => want.iter().find_map(|(k, v)| match got.get(k) {
            None => Some(format!("{at}/{k} is missing")),
            Some(g) => mismatch(v, g, &format!("{at}/{k}")),
        }),
        _ if expected == actual => None,
        _ => Some(format!("{} is {actual}, expected {expected}", if at.is_empty() { "/" } else { at })),
    }
}

/// Compares what a case wrote to `written` with `expected`; every difference found.
fn compare(expected: &Path, written: &Path) -> Vec<String> {
    let (want, got) = (json_lines(expected), json_lines(written));
    let name = expected.file_name().unwrap().to_string_lossy();
    let mut problems: Vec<String> = want
        .iter()
        .zip(&got)
        .enumerate()
        .filter_map(|(i, (w, g))| mismatch(w, g, "").map(|why| format!("{name}:{}: {why}\n    written: {g}", i + 1)))
        .collect();
    if want.len() != got.len() {
        problems.push(format!("{name}: {} records expected, {} written", want.len(), got.len()));
    }
    problems
}

/// Runs one case; every difference found, and the log when there are some.
fn run_case(case: &Path) -> Vec<String> {
    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("weir.log");
    let admin = format!("127.0.0.1:{}", free_port());
    let args = ["run", "--once", "--no-watch", "--pipelines", case.to_str().unwrap(), "--admin", &admin];
    let status = weir_until_done(&args, &[("CASE_OUT", out.path().to_str().unwrap())], &log, Duration::from_secs(60));
    let mut problems = match status {
        Some(s) if s.success() => Vec::new(),
        Some(s) => vec![format!("weir exited with {s}")],
        None => vec!["weir did not finish within 60 s".to_owned()],
    };
    for (expected, written) in [("expected.jsonl", "output.jsonl"), ("expected_dead_letters.jsonl", "dead_letters.jsonl")] {
        if case.join(expected).exists() {
            problems.extend(compare(&case.join(expected), &out.path().join(written)));
        }
    }
    if !problems.is_empty() {
        problems.push(format!("log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    }
    problems
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/pipelines"))
        .expect("tests/pipelines exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("pipeline.yaml").exists())
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_case_under_tests_pipelines_writes_what_it_expects() {
    let cases = cases();
    assert!(cases.len() >= 5, "cases found: {cases:?}");
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let problems = run_case(case);
            let name = case.file_name().unwrap().to_string_lossy();
            (!problems.is_empty()).then(|| format!("case {name}:\n  {}", problems.join("\n  ")))
        })
        .collect();
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), cases.len(), failed.join("\n\n"));
}

#[test]
fn a_subset_match_names_where_records_differ() {
    let want: Value = serde_json::json!({"a": {"b": 1, "c": "*"}, "d": [1, 2]});
    assert_eq!(mismatch(&want, &serde_json::json!({"a": {"b": 1, "c": null, "x": 0}, "d": [1, 2], "e": 3}), ""), None);
    assert_eq!(mismatch(&want, &serde_json::json!({"a": {"b": 2, "c": 1}, "d": [1, 2]}), "").unwrap(), "/a/b is 2, expected 1");
    assert_eq!(mismatch(&want, &serde_json::json!({"a": {"b": 1}, "d": [1, 2]}), "").unwrap(), "/a/c is missing");
    assert!(mismatch(&want, &serde_json::json!({"a": {"b": 1, "c": 0}, "d": [2, 1]}), "").unwrap().starts_with("/d is [2,1]"));
}
