//! Pipelines changed through the admin API. The pipeline directory stays the source of
//! truth: a pipeline put is checked exactly as `weir validate` checks a file, written into
//! the directory atomically and applied by a reload (make-before-break); a removed one loses
//! its file and is drained. `If-Match` with a pipeline's ETag (its config hash) makes
//! concurrent writers safe: the second one gets 412 and reads again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::Host;
use crate::config::PipelineFile;
use crate::error::{dotted, HostError};
use crate::pipeline;

/// One thing wrong with a pipeline sent to the API, with its position in the body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The field, dotted (`sinks[0].config.url`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The field as a JSON pointer (`/sinks/0/config/url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// 1-based line and column in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    fn from_error(e: &HostError) -> Problem {
        match e {
            HostError::File(l) => Problem {
                field: l.field.as_deref().filter(|p| !p.is_empty()).map(dotted),
                pointer: l.field.clone().filter(|p| !p.is_empty()),
                line: l.line,
                column: l.line.map(|_| l.column.unwrap_or(1)),
                message: l.message.clone(),
            },
            other => Problem { field: None, pointer: None, line: None, column: None, message: other.to_string() },
        }
    }
}

/// Why a pipeline was not written or removed.
#[derive(Debug)]
pub enum ApplyError {
    /// The body is not a valid pipeline (422), every problem found.
    Invalid(Vec<Problem>),
    /// No pipeline has that name (404).
    NotFound(String),
    /// `If-Match` / `If-None-Match` did not hold (412): what the pipeline's ETag is now.
    Precondition(String),
    /// The name is taken by a file that is not this pipeline's (409).
    Conflict(String),
    /// It checked, but could not start; the previous version (if any) keeps running (422).
    NotStarted(String),
    /// The directory could not be written (500).
    Io(String),
}

/// What a put did.
#[derive(Debug, Serialize)]
pub struct Applied {
    /// The pipeline.
    pub name: String,
    /// `created`, `replaced` or `unchanged`.
    pub result: &'static str,
    /// Its file in the pipeline directory.
    pub file: PathBuf,
    /// Its ETag now (the config hash, quoted).
    pub etag: String,
}

/// A pipeline's ETag: its config hash, quoted.
pub fn etag(hash: u64) -> String {
    format!("\"{hash:016x}\"")
}

/// What the request's `If-Match` / `If-None-Match` ask of the pipeline's current ETag.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    /// `If-Match`: one of these ETags (or `*`: any, the pipeline must exist).
    pub if_match: Option<String>,
    /// `If-None-Match: *`: the pipeline must not exist yet.
    pub if_none_match: Option<String>,
}

impl Preconditions {
    fn check(&self, current: Option<&str>) -> Result<(), ApplyError> {
        let now = || current.map_or("none (there is no such pipeline)".to_owned(), str::to_owned);
        if let Some(wanted) = &self.if_match {
            let ok = match current {
                None => false,
                Some(cur) => wanted.split(',').map(str::trim).any(|w| w == "*" || w.trim_start_matches("W/") == cur),
            };
            if !ok {
                return Err(ApplyError::Precondition(format!(
                    "If-Match {wanted} does not match the pipeline's ETag, which is {}: someone changed it since you read it; GET it again",
                    now()
                )));
            }
        }
        if let Some(none) = &self.if_none_match {
            let hit = current.is_some_and(|cur| none.split(',').map(str::trim).any(|w| w == "*" || w.trim_start_matches("W/") == cur));
            if hit {
                return Err(ApplyError::Precondition(format!(
                    "If-None-Match {none} holds no more: the pipeline exists, with ETag {}",
                    now()
                )));
            }
        }
        Ok(())
    }
}

/// Reads pipeline text sent to the API as if it were the file `path`, checked like `weir
/// validate` checks a file; every problem found, with positions into the text.
fn check_text(host: &Host, path: &Path, text: &str) -> Result<PipelineFile, Vec<Problem>> {
    let file = PipelineFile::parse(path, text, |v| std::env::var(v).ok()).map_err(|e| vec![Problem::from_error(&e)])?;
    let errors = pipeline::check(&file, &host.registry());
    if errors.is_empty() {
        Ok(file)
    } else {
        Err(errors.iter().map(Problem::from_error).collect())
    }
}

impl Host {
    fn pipeline_dir(&self) -> Result<PathBuf, ApplyError> {
        self.dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| ApplyError::Io("the host has no pipeline directory".into()))
    }

    /// Checks pipeline text without writing or starting anything (`POST
    /// /pipelines/validate`): every problem found, none when it would start.
    pub fn validate_text(&self, text: &str) -> Vec<Problem> {
        let dir = self.pipeline_dir().unwrap_or_else(|_| PathBuf::from("."));
        match check_text(self, &dir.join("pipeline.yaml"), text) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    /// Writes pipeline `name` from `text` (YAML or JSON) into the pipeline directory and
    /// applies it make-before-break; a version that does not start is taken back, so the
    /// directory keeps the one that runs.
    pub fn apply(&self, name: &str, text: &str, pre: &Preconditions, drain: Duration) -> Result<Applied, ApplyError> {
        let _one_writer = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.pipeline_dir()?;
        let current = self.pipelines().into_iter().find(|p| p.name == name);
        pre.check(current.as_ref().map(|p| etag(p.hash)).as_deref())?;
        let path = match &current {
            Some(p) => p.file.clone(),
            None => dir.join(format!("{name}.yaml")),
        };
        if current.is_none() && path.exists() && !stray(&path, name) {
            return Err(ApplyError::Conflict(format!(
                "{} exists but holds another pipeline; choose another name or remove that file",
                path.display()
            )));
        }
        let file = check_text(self, &path, text).map_err(ApplyError::Invalid)?;
        if file.name != name {
            let problem = Problem {
                field: Some("name".into()),
                pointer: Some("/name".into()),
                line: None,
                column: None,
                message: format!(
                    "the body names the pipeline {:?} but the path says {name:?}; make them the same or drop `name`",
                    file.name
                ),
            };
            return Err(ApplyError::Invalid(vec![problem]));
        }
        let previous = std::fs::read(&path).ok();
        write_atomically(&path, text.as_bytes()).map_err(|e| ApplyError::Io(format!("cannot write {}: {e}", path.display())))?;
        let report = self.reload(drain);
        let outcome = self.history.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|(_, last)| last.clone());
        let result = outcome.as_ref().and_then(|o| o["result"].as_str()).unwrap_or("");
        let running = self.pipelines().into_iter().find(|p| p.name == name && p.file == path);
        match (result, running) {
            ("started" | "replaced" | "unchanged", Some(p)) if p.hash == file.hash() => Ok(Applied {
                name: name.to_owned(),
                result: match (current.is_some(), result) {
                    (false, _) => "created",
                    (true, "unchanged") => "unchanged",
                    _ => "replaced",
                },
                file: path,
                etag: etag(p.hash),
            }),
            _ => {
                // Take the file back, so the directory says what runs.
                let restored = match previous {
                    Some(bytes) => write_atomically(&path, &bytes),
                    None => std::fs::remove_file(&path),
                };
                if let Err(e) = restored {
                    tracing::error!(file = %path.display(), error = %e, "Could not take back a pipeline that did not start.");
                }
                let why = outcome
                    .and_then(|o| o["error"].as_str().map(str::to_owned))
                    .or_else(|| report.errors.first().cloned())
                    .unwrap_or_else(|| "the pipeline did not start".into());
                Err(ApplyError::NotStarted(why))
            }
        }
    }

    /// Removes pipeline `name`: its file goes, and the pipeline drains and stops. A file
    /// `{name}.yaml` that runs nothing (it did not load or start) is removed too.
    pub fn remove(&self, name: &str, pre: &Preconditions, drain: Duration) -> Result<PathBuf, ApplyError> {
        let _one_writer = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let Some(current) = self.pipelines().into_iter().find(|p| p.name == name) else {
            let path = self.pipeline_dir()?.join(format!("{name}.yaml"));
            if pre.if_match.is_none() && path.exists() && stray(&path, name) {
                std::fs::remove_file(&path).map_err(|e| ApplyError::Io(format!("cannot remove {}: {e}", path.display())))?;
                self.reload(drain);
                return Ok(path);
            }
            return Err(ApplyError::NotFound(format!("no pipeline called {name:?}")));
        };
        pre.check(Some(&etag(current.hash)))?;
        std::fs::remove_file(&current.file).map_err(|e| ApplyError::Io(format!("cannot remove {}: {e}", current.file.display())))?;
        self.reload(drain);
        Ok(current.file.clone())
    }
}

/// Whether `path`, which runs no pipeline, may be taken over by pipeline `name`: it does not
/// load, or it names that pipeline (it failed to start).
fn stray(path: &Path, name: &str) -> bool {
    PipelineFile::load(path).map_or(true, |f| f.name == name)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced, then
/// renamed over it: a reader (the watcher, a reload) sees the old file or the new, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preconditions_compare_etags() {
        let pre = |m: Option<&str>, n: Option<&str>| Preconditions { if_match: m.map(Into::into), if_none_match: n.map(Into::into) };
        let cur = Some("\"00000000000000ab\"");
        assert!(pre(None, None).check(cur).is_ok() && pre(None, None).check(None).is_ok());
        assert!(pre(Some("\"00000000000000ab\""), None).check(cur).is_ok());
        assert!(pre(Some("\"x\", W/\"00000000000000ab\""), None).check(cur).is_ok(), "a list, weak tags compared by value");
        assert!(pre(Some("*"), None).check(cur).is_ok());
        let Err(ApplyError::Precondition(why)) = pre(Some("\"00000000000000ac\""), None).check(cur) else { panic!() };
        assert!(why.contains("\"00000000000000ab\"") && why.contains("GET it again"), "{why}");
        assert!(matches!(pre(Some("*"), None).check(None), Err(ApplyError::Precondition(_))), "* needs a pipeline");
        assert!(pre(None, Some("*")).check(None).is_ok());
        assert!(matches!(pre(None, Some("*")).check(cur), Err(ApplyError::Precondition(_))), "create only");
    }

    #[test]
    fn files_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
