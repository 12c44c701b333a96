//! Pipeline tests as code (`weir test`): a test file beside a pipeline gives records to the
//! pipeline's source stage and says what must reach each sink and the dead letters. The
//! pipeline runs in the process with its real transforms; its source is replaced by the
//! `file` source replaying the test's records and every sink (and the dead-letter sink, added
//! when the pipeline has none) by the `file` sink writing where the test reads, so no
//! external system is touched by a source or sink.

mod expect;
mod junit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

pub use expect::{Condition, Expect};
pub use junit::junit;

use crate::config::{interpolate_keeping_unset, PipelineFile};
use crate::loader::Registry;
use crate::metrics::Metrics;
use crate::pipeline::{self, Pipeline, State};

/// A file of pipeline tests, `NAME.test.yaml` beside the pipeline `NAME.yaml`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The pipeline file under test, relative to this file; by default the file named like
    /// this one without `.test` (`default.test.yaml` tests `default.yaml`).
    #[serde(default)]
    pub pipeline: Option<PathBuf>,
    /// Environment variables for the pipeline's `${VAR}`s, over the process's own.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The tests; each runs on a new instance of the pipeline.
    pub tests: Vec<Case>,
}

/// One test: records in, expectations out.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What it checks, as reports name it.
    pub name: String,
    /// Records given to the pipeline's source stage, in order, as JSON values.
    #[serde(default)]
    pub input: Vec<Value>,
    /// Records that are not JSON (one line of text each), given after `input`.
    #[serde(default)]
    pub raw_input: Vec<String>,
    /// What must reach each sink, by stage name; a sink not named here is not checked.
    #[serde(default)]
    pub sinks: BTreeMap<String, Expect>,
    /// What must reach the dead letters: the records a transform rejected or a sink refused,
    /// as they reached that stage; `reasons` checks why.
    #[serde(default)]
    pub dead_letters: Option<Expect>,
}

/// What became of one test.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The test's name.
    pub name: String,
    /// Each expectation that did not hold (or why the test could not run); none when it passed.
    pub failures: Vec<String>,
    /// How long it took.
    pub elapsed: Duration,
}

/// What became of one test file.
#[derive(Debug, Clone)]
pub struct FileOutcome {
    /// The test file.
    pub file: PathBuf,
    /// The pipeline it tests, when found.
    pub pipeline: Option<PathBuf>,
    /// Why the file could not be run at all.
    pub error: Option<String>,
    /// Each test.
    pub tests: Vec<Outcome>,
}

impl FileOutcome {
    /// Whether every test passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.tests.iter().all(|t| t.failures.is_empty())
    }
}

/// Whether `path` names a test file (`*.test.yaml` / `*.test.yml`).
pub fn is_test_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
}

/// The test files in `dir` (not its subdirectories), sorted.
pub fn test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_test_file(p)).collect();
    files.sort();
    Ok(files)
}

/// Runs the tests of `path` against the plugins of `registry`.
pub fn run_file(path: &Path, registry: &Registry) -> FileOutcome {
    let mut outcome = FileOutcome { file: path.to_path_buf(), pipeline: None, error: None, tests: Vec::new() };
    let spec = match std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}")).and_then(|text| {
        serde_yaml::from_str::<TestFile>(&text).map_err(|e| match e.location() {
            Some(l) => format!("line {} column {}: {e}", l.line(), l.column()),
            None => e.to_string(),
        })
    }) {
        Ok(s) => s,
        Err(e) => {
            outcome.error = Some(format!("{}: {e}", path.display()));
            return outcome;
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let pipeline_path = match &spec.pipeline {
        Some(p) => dir.join(p),
        None => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let stem = name.trim_end_matches(".yml").trim_end_matches(".yaml").trim_end_matches(".test");
            dir.join(format!("{stem}.yaml"))
        }
    };
    outcome.pipeline = Some(pipeline_path.clone());
    let text = match std::fs::read_to_string(&pipeline_path) {
        Ok(t) => t,
        Err(e) => {
            outcome.error =
                Some(format!("{}: cannot read the pipeline {}: {e}; name it with `pipeline:`", path.display(), pipeline_path.display()));
            return outcome;
        }
    };
    for case in &spec.tests {
        let started = Instant::now();
        let failures = match run_case(&pipeline_path, &text, &spec.env, case, registry) {
            Ok(failures) => failures,
            Err(e) => vec![e],
        };
        outcome.tests.push(Outcome { name: case.name.clone(), failures, elapsed: started.elapsed() });
    }
    outcome
}

/// The name a stage goes by: its `name`, else its plugin's.
fn stage_name(stage: &serde_yaml::Value, fallback: &str) -> String {
    stage.get("name").and_then(|n| n.as_str()).or_else(|| stage.get("plugin").and_then(|p| p.as_str())).unwrap_or(fallback).to_owned()
}

/// `stage` with its plugin replaced by the `file` sink or source at `path`, under the name it had.
fn stand_in(stage: &serde_yaml::Value, name: &str, config: Value) -> serde_yaml::Value {
    let mut out = serde_yaml::Mapping::new();
    out.insert("name".into(), name.into());
    out.insert("plugin".into(), "file".into());
    out.insert("config".into(), serde_yaml::to_value(config).unwrap_or_default());
    // Wiring, routing and switches stay; what only the real plugin needs (a disk buffer) goes.
    for key in ["after", "takes", "when", "enabled", "retry"] {
        if let Some(v) = stage.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    serde_yaml::Value::Mapping(out)
}

/// The pipeline `text` with its source and sinks stood in for under `dir`: where each sink's
/// records go, by stage name, and where the dead letters go.
fn rewrite(text: &str, dir: &Path, input: &Path) -> Result<(String, Vec<(String, PathBuf)>, PathBuf), String> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| format!("the pipeline is not YAML: {e}"))?;
    let map = doc.as_mapping_mut().ok_or("the pipeline is not a mapping")?;
    let source = map.get("source").cloned().ok_or("the pipeline has no source")?;
    let source_name = stage_name(&source, "source");
    let replay = serde_json::json!({"path": input, "format": "lines", "batch_size": 100});
    map.insert("source".into(), stand_in(&source, &source_name, replay));
    let mut outputs = Vec::new();
    if let Some(sinks) = map.get_mut("sinks").and_then(|s| s.as_sequence_mut()) {
        for (i, sink) in sinks.iter_mut().enumerate() {
            let name = stage_name(sink, &format!("sink{i}"));
            let path = dir.join(format!("sink-{i}.jsonl"));
            *sink = stand_in(sink, &name, serde_json::json!({ "path": path }));
            outputs.push((name, path));
        }
    }
    let dead = dir.join("dead-letters.jsonl");
    let dead_stage = map.get("dead_letter").cloned().unwrap_or_else(|| serde_yaml::Value::Mapping(Default::default()));
    let dead_name = stage_name(&dead_stage, "dead_letter");
    let dead_name = if dead_stage.get("name").is_some() { dead_name } else { "dead_letter".to_owned() };
    map.insert("dead_letter".into(), stand_in(&dead_stage, &dead_name, serde_json::json!({ "path": dead })));
    let text = serde_yaml::to_string(&doc).map_err(|e| e.to_string())?;
    Ok((text, outputs, dead))
}

/// The lines a stand-in wrote.
fn written(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// A record as JSON, or as a string when it is not JSON.
fn value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Runs one test; the expectations that did not hold.
fn run_case(
    pipeline_path: &Path,
    text: &str,
    env: &BTreeMap<String, String>,
    case: &Case,
    registry: &Registry,
) -> Result<Vec<String>, String> {
    let tmp = tempdir()?;
    let input = tmp.path.join("input.jsonl");
    let mut lines = String::new();
    for v in &case.input {
        lines.push_str(&v.to_string());
        lines.push('\n');
    }
    for raw in &case.raw_input {
        if raw.contains('\n') || raw.trim().is_empty() {
            return Err(format!("raw_input {raw:?}: a raw record is one line of text"));
        }
        lines.push_str(raw);
        lines.push('\n');
    }
    std::fs::write(&input, lines).map_err(|e| format!("cannot write the input: {e}"))?;
    // Variables are filled in first, so values keep their YAML types; one that is not set
    // stays a placeholder, an error only if it is still there once the source and sinks
    // are stood in for (their configs are not used).
    let lookup = |v: &str| env.get(v).cloned().or_else(|| std::env::var(v).ok());
    let (filled, mut redactor) =
        interpolate_keeping_unset(text, pipeline_path, lookup).map_err(|e| format!("the pipeline does not load: {e}"))?;
    if let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&filled) {
        redactor.classify(&doc);
    }
    let (rewritten, outputs, dead) = rewrite(&filled, &tmp.path, &input)?;
    let file = PipelineFile::parse(pipeline_path, &rewritten, lookup)
        .map_err(|e| format!("the pipeline does not load: {}", redactor.redact(&e.to_string())))?;
    if let Some(e) = pipeline::check(&file, registry).into_iter().next() {
        return Err(format!("the pipeline does not check: {}", redactor.redact(&e.to_string())));
    }
    for name in case.sinks.keys() {
        if !outputs.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!("the pipeline has no sink called {name:?}; its sinks are {known:?}"));
        }
    }
    let metrics = Metrics::default();
    let running = Pipeline::start(&file, registry, &metrics)
        .map_err(|e| format!("the pipeline does not start: {}", redactor.redact(&e.to_string())))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while matches!(running.state().0, State::Running | State::Stopping) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (state, error) = running.state();
    running.stop(Duration::from_secs(10), &metrics);
    if state != State::Finished {
        return Err(format!(
            "the pipeline did not finish its input within 60 s (it is {}{})",
            state.name(),
            error.map(|e| format!(": {e}")).unwrap_or_default()
        ));
    }
    let mut failures = Vec::new();
    for (name, expect) in &case.sinks {
        let path = &outputs.iter().find(|(n, _)| n == name).expect("checked above").1;
        let texts = written(path);
        let records: Vec<Value> = texts.iter().map(|t| value(t)).collect();
        failures.extend(expect.check(&format!("sink {name}"), &records, &texts, None));
    }
    if let Some(expect) = &case.dead_letters {
        /// A dead letter's record as the host wrote it.
        #[derive(Deserialize)]
        struct Letter<'a> {
            #[serde(borrow)]
            record: &'a serde_json::value::RawValue,
        }
        let lines = written(&dead);
        let texts: Vec<String> =
            lines.iter().map(|l| serde_json::from_str::<Letter>(l).map_or_else(|_| l.clone(), |e| e.record.get().to_owned())).collect();
        let letters: Vec<Value> = lines.iter().map(|l| value(l)).collect();
        let records: Vec<Value> = letters.iter().map(|l| l["record"].clone()).collect();
        let reasons: Vec<String> =
            letters.iter().map(|l| format!("{}: {}", l["stage"].as_str().unwrap_or(""), l["reason"].as_str().unwrap_or(""))).collect();
        failures.extend(expect.check("the dead letters", &records, &texts, Some(&reasons)));
    }
    Ok(failures)
}

/// A directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn tempdir() -> Result<TempDir, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!("weir-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    Ok(TempDir { path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_sinks_are_stood_in_for_under_their_names() {
        let text = "name: p\nsource: {plugin: http, config: {listen: \"127.0.0.1:1\"}}\ntransforms: [{plugin: validate, config: {schema: s.json}}]\nsinks:\n  - {plugin: postgres, config: {url: \"postgres://u:pw@h/db\"}, buffer: {disk: d}, workers: 2}\n  - {name: m, plugin: prometheus, after: postgres, takes: all}\n";
        let (out, outputs, dead) = rewrite(text, Path::new("/t"), Path::new("/t/in.jsonl")).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(doc["source"]["plugin"], "file");
        assert_eq!(doc["source"]["name"], "http");
        assert_eq!(doc["transforms"][0]["plugin"], "validate", "transforms are kept");
        assert_eq!(doc["sinks"][0]["name"], "postgres");
        assert!(doc["sinks"][0].get("buffer").is_none() && !out.contains("pw@h"), "{out}");
        assert_eq!((doc["sinks"][1]["after"].as_str(), doc["sinks"][1]["takes"].as_str()), (Some("postgres"), Some("all")));
        assert_eq!(outputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["postgres", "m"]);
        assert_eq!(dead, Path::new("/t/dead-letters.jsonl"));
        assert_eq!(doc["dead_letter"]["name"], "dead_letter");
        assert!(is_test_file(Path::new("a/default.test.yaml")) && !is_test_file(Path::new("a/default.yaml")));
    }
}
