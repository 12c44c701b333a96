//! The host's one error type, classified.

use std::fmt;
use std::path::{Path, PathBuf};

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The user's: a config, a flag, a file.
    User,
    /// A plugin library's: missing, incompatible or failing.
    Plugin,
    /// The operating system's or the host's own.
    Internal,
}

/// An error in a file, with its position and field when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// The field, as a JSON pointer into the file.
    pub field: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl Located {
    /// An error in `file`.
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        Located { file: file.to_path_buf(), line: None, column: None, field: None, message: message.into() }
    }

    /// At a line and column.
    pub fn at(mut self, line: usize, column: usize) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }

    /// About a field (a JSON pointer).
    pub fn field(mut self, pointer: &str) -> Self {
        self.field = Some(pointer.to_owned());
        self
    }
}

/// `/transforms/0/config/schema` → `transforms[0].config.schema`.
pub fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}:{}", self.column.unwrap_or(1))?;
        }
        write!(f, ": ")?;
        if let Some(field) = self.field.as_deref().filter(|p| !p.is_empty()) {
            write!(f, "{}: ", dotted(field))?;
        }
        write!(f, "{}", self.message)
    }
}

/// Everything that can go wrong in the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A pipeline or config file is wrong.
    #[error("{0}")]
    File(Located),
    /// A flag or setting is wrong.
    #[error("{0}")]
    Usage(String),
    /// A plugin library could not be used.
    #[error("{0}")]
    Plugin(String),
    /// A plugin failed to start or stop.
    #[error("stage {stage}: {message}")]
    Stage {
        /// The stage.
        stage: String,
        /// What the plugin said.
        message: String,
    },
    /// A sink's disk buffer cannot be read or written: the file or directory, and what the
    /// system said.
    #[error("disk buffer {}: {source}", path.display())]
    DiskBuffer {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A frame in a sink's disk buffer is damaged (cut short, without its mark, with a
    /// wrong checksum, or not a batch).
    #[error("disk buffer {} at byte {offset}: {why}", path.display())]
    Damaged {
        /// The segment file.
        path: PathBuf,
        /// Where the frame starts.
        offset: u64,
        /// What is wrong with it.
        why: String,
    },
    /// Traces cannot be turned on as configured (a setting or `OTEL_*` variable).
    #[error("{0}")]
    Telemetry(String),
    /// The operating system refused something.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<Located> for HostError {
    fn from(l: Located) -> Self {
        HostError::File(l)
    }
}

impl HostError {
    /// Whose fault it is.
    pub fn class(&self) -> Class {
        match self {
            HostError::File(_) | HostError::Usage(_) | HostError::Telemetry(_) => Class::User,
            HostError::Plugin(_) | HostError::Stage { .. } => Class::Plugin,
            HostError::DiskBuffer { .. } | HostError::Damaged { .. } | HostError::Io(_) => Class::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_position_and_field() {
        let e = Located::new(Path::new("p.yaml"), "unknown field `x`").at(3, 5).field("/transforms/1/config/x");
        assert_eq!(e.to_string(), "p.yaml:3:5: transforms[1].config.x: unknown field `x`");
    }
}
