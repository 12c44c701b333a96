//! The compatibility promise of the plugin ABI: a host loads and runs every library built for
//! an older minor of its major. tests/fixtures/abi/ holds one prebuilt library per released
//! minor (`1.N/libweir_abi_fixture_1_N.so`, or `.so.gz`), built by build.sh there from the
//! commit that introduced the minor (see its README). For each one found, this checkout's
//! `weir` must list it with its ABI and plugins, run its config checks, and run a pipeline
//! through it: the `file` source, its `fixture-tag` transform and its `fixture-file` sink, to
//! the end of the input with `weir run --once`. A new minor's directory is picked up here
//! without any change.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{bin_dir, free_port, host_abi, repo, weir, weir_until_done};
use serde_json::{json, Value};

/// One fixture library: the ABI it was built for (`1.N`) and its file in the repository.
struct Fixture {
    abi: (u16, u16),
    file: PathBuf,
}

impl Fixture {
    fn version(&self) -> String {
        format!("{}.{}", self.abi.0, self.abi.1)
    }

    /// Puts the library into `dir` under its own name (gunzipped when stored as `.so.gz`).
    fn install(&self, dir: &Path) -> PathBuf {
        let name = self.file.file_name().unwrap().to_str().unwrap();
        match name.strip_suffix(".gz") {
            Some(plain) => {
                let to = dir.join(plain);
                let out = Command::new("gzip").arg("-dc").arg(&self.file).output().expect("gzip");
                assert!(out.status.success(), "gzip -dc {}: {}", self.file.display(), String::from_utf8_lossy(&out.stderr));
                std::fs::write(&to, out.stdout).unwrap();
                to
            }
            None => {
                let to = dir.join(name);
                std::fs::copy(&self.file, &to).unwrap();
                to
            }
        }
    }
}

/// Every `MAJOR.MINOR` directory under tests/fixtures/abi with its library, oldest first.
fn fixtures() -> Vec<Fixture> {
    let root = repo().join("tests/fixtures/abi");
    let mut found: Vec<Fixture> = std::fs::read_dir(&root)
        .expect("tests/fixtures/abi exists")
        .map(|e| e.unwrap().path())
        .filter_map(|dir| {
            let name = dir.file_name()?.to_str()?.to_owned();
            let (major, minor) = name.split_once('.')?;
            let abi = (major.parse().ok()?, minor.parse().ok()?);
            let library = format!("libweir_abi_fixture_{major}_{minor}.so");
            let file = [dir.join(&library), dir.join(format!("{library}.gz"))].into_iter().find(|f| f.exists());
            Some(Fixture { abi, file: file.unwrap_or_else(|| panic!("{} has neither {library} nor {library}.gz", dir.display())) })
        })
        .collect();
    found.sort_by_key(|f| f.abi);
    found
}

/// Runs `weir ARGS` to its end, at most 60 s; its log, or why it failed with the log.
fn run_to_end(args: &[&str], log: &Path) -> Result<String, String> {
    let status = weir_until_done(args, &[], log, Duration::from_secs(60));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(text),
        Some(s) => Err(format!("weir {} exited with {s}:\n{text}", args.join(" "))),
        None => Err(format!("weir {} did not finish within 60 s:\n{text}", args.join(" "))),
    }
}

/// The input, read in batches of 4 records. The transform passes on unchanged every record
/// of the first batch (they already have `abi`: from ABI 1.3 on, it hands back only their
/// indexes), and the next ones mix records it passes (before and after the ones it tags),
/// tags, refuses (its marker, not an object), and records the sink refuses.
fn input() -> Vec<String> {
    (0..24)
        .map(|i| match i {
            0..=3 | 7 | 13 | 16 => format!(r#"{{"id":{i},"abi":"preset"}}"#),
            5 => format!(r#"{{"id":{i},"note":"refuse-in-transform"}}"#),
            6 => format!("[{i}]"),
            9 | 17 => format!(r#"{{"id":{i},"note":"refuse-in-sink"}}"#),
            _ => format!(r#"{{"id":{i},"text":"record {i}","nested":{{"n":[{i},true,null]}}}}"#),
        })
        .collect()
}

const PIPELINE: &str = "source: {plugin: file, config: {path: @DIR@/input.jsonl, batch_size: 4}}
transforms: [{plugin: fixture-tag, config: {reject_marker: refuse-in-transform}}]
sinks: [{plugin: fixture-file, config: {path: @DIR@/output.jsonl, reject_marker: refuse-in-sink}}]
dead_letter: {plugin: file, config: {path: @DIR@/dead_letters.jsonl}}
";

/// Everything wrong with how this checkout's weir lists, checks and runs `fixture`.
fn check(fixture: &Fixture) -> Vec<String> {
    let version = fixture.version();
    let library = format!("weir-abi-fixture-{}-{}", fixture.abi.0, fixture.abi.1);
    let mut problems = Vec::new();
    let lib_dir = tempfile::tempdir().unwrap();
    let installed = fixture.install(lib_dir.path());
    let (libs, bins) = (lib_dir.path().to_str().unwrap(), bin_dir());
    let plugin_dirs = ["--plugins", libs, "--plugins", bins.to_str().unwrap()];

    // Listed with its ABI and both plugins, and nothing refused.
    let listed = weir(&["plugins", "--json", "--plugins", libs], &[]);
    let text = String::from_utf8_lossy(&listed.stdout);
    match serde_json::from_str::<Value>(&text) {
        Ok(list) if listed.status.success() => {
            let got: Vec<Value> = list["libraries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    let mut plugins: Vec<Value> =
                        l["plugins"].as_array().into_iter().flatten().map(|p| json!({"name": p["name"], "kind": p["kind"]})).collect();
                    plugins.sort_by_key(|p| p["name"].to_string());
                    json!({"path": l["path"], "name": l["name"], "version": l["version"], "abi": l["abi"], "plugins": plugins})
                })
                .collect();
            let wanted = json!([{
                "path": installed, "name": library, "version": format!("{version}.0"), "abi": version,
                "plugins": [{"name": "fixture-file", "kind": "sink"}, {"name": "fixture-tag", "kind": "transform"}],
            }]);
            if Value::from(got.clone()) != wanted {
                problems.push(format!("weir plugins --json lists {}, expected {wanted}", Value::from(got)));
            }
            if list["broken"] != json!([]) || list["skipped"] != json!([]) {
                problems.push(format!("weir plugins --json refuses something: {list}"));
            }
        }
        _ => problems.push(format!("weir plugins --json failed ({}): {text}{}", listed.status, String::from_utf8_lossy(&listed.stderr))),
    }

    // Its own config check (the descriptor's validate) answers through `weir validate`.
    let scene = common::Scene::new();
    let bad = scene.pipeline("bad", &PIPELINE.replace("reject_marker: refuse-in-transform", "reject_marker: \"\""));
    let mut args = vec!["validate", "--format", "json", bad.to_str().unwrap()];
    args.extend(plugin_dirs);
    let validated = weir(&args, &[]);
    let report = String::from_utf8_lossy(&validated.stdout);
    if validated.status.success() || !report.contains("reject_marker must not be empty") {
        problems.push(format!("weir validate of an empty reject_marker ({}): {report}", validated.status));
    }
    std::fs::remove_file(bad).unwrap();

    // A pipeline through both plugins, to the end of its input.
    let input = input();
    std::fs::write(scene.path("input.jsonl"), input.join("\n") + "\n").unwrap();
    scene.pipeline("fixture", PIPELINE);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut run = vec!["run", "--once", "--no-watch", "--pipelines", scene.pipelines.to_str().unwrap(), "--admin", &admin];
    run.extend(plugin_dirs);
    let log = match run_to_end(&run, &scene.path("weir.log")) {
        Ok(log) => log,
        Err(why) => {
            problems.push(why);
            return problems;
        }
    };
    let opened = format!("fixture-file built for plugin ABI {version} appends to {}", scene.path("output.jsonl").display());
    if !log.contains(&opened) {
        problems.push(format!("the sink's log line ({opened}) is missing:\n{log}"));
    }

    let written = std::fs::read_to_string(scene.path("output.jsonl")).unwrap_or_default();
    let written: Vec<&str> = written.lines().collect();
    let mut expected = Vec::new();
    let mut letters = Vec::new();
    for line in &input {
        let record: Value = serde_json::from_str(line).unwrap();
        if line.contains("refuse-in-transform") {
            letters.push(json!({"stage": "fixture-tag", "reason": "holds the marker refuse-in-transform", "record": record}));
        } else if !record.is_object() {
            letters.push(json!({"stage": "fixture-tag", "reason": "not a JSON object", "record": record}));
        } else if line.contains("refuse-in-sink") {
            let mut tagged = record;
            tagged["abi"] = json!(version);
            letters.push(json!({"stage": "fixture-file", "reason": "holds the marker refuse-in-sink", "record": tagged}));
        } else {
            expected.push(line.clone());
        }
    }
    if written.len() != expected.len() {
        problems.push(format!("{} records written, {} expected:\n{}", written.len(), expected.len(), written.join("\n")));
    }
    for (got, sent) in written.iter().zip(&expected) {
        if sent.contains(r#""abi":"preset""#) {
            // Passed on unchanged: the very bytes read.
            if got != sent {
                problems.push(format!("passed on as {got}, read as {sent}"));
            }
            continue;
        }
        let mut want: Value = serde_json::from_str(sent).unwrap();
        want["abi"] = json!(version);
        match serde_json::from_str::<Value>(got) {
            Ok(g) if g == want => {}
            _ => problems.push(format!("written {got}, expected {want}")),
        }
    }

    let mut dead: Vec<Value> = common::json_lines(&scene.path("dead_letters.jsonl"))
        .into_iter()
        .map(|l| json!({"stage": l["stage"], "reason": l["reason"], "record": l["record"]}))
        .collect();
    let key = |v: &Value| v["record"].to_string();
    dead.sort_by_key(key);
    letters.sort_by_key(key);
    if dead != letters {
        problems.push(format!("dead letters {}, expected {}", Value::from(dead), Value::from(letters)));
    }
    problems
}

#[test]
fn every_released_abi_minor_still_loads_and_runs() {
    let fixtures = fixtures();
    let versions: Vec<String> = fixtures.iter().map(Fixture::version).collect();
    assert!(fixtures.len() >= 7, "fixtures found under tests/fixtures/abi: {versions:?}");
    let host = host_abi();
    assert!(
        fixtures.iter().all(|f| f.abi.0 == host.0 && f.abi.1 <= host.1),
        "every fixture is for this host's major ({}) and a minor it knows (up to {}): {versions:?}",
        host.0,
        host.1
    );
    let failed: Vec<String> = fixtures
        .iter()
        .filter_map(|f| {
            let problems = check(f);
            (!problems.is_empty()).then(|| format!("ABI {} ({}):\n  {}", f.version(), f.file.display(), problems.join("\n  ")))
        })
        .collect();
    assert!(failed.is_empty(), "{} of {} fixture libraries failed:\n{}", failed.len(), fixtures.len(), failed.join("\n\n"));
}
