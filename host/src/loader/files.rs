//! The library files the loader maps: left alone long enough to be complete, copied to a
//! directory of this process's own, and checked there, since the copy is what is mapped.
//!
//! A mapped file that is cut short or rewritten in place under a running process (`cp` over
//! it, a full disk) turns into SIGBUS at the next page the process touches. Nobody but this
//! process writes its private copies, so mapping a copy keeps the code stable whatever
//! happens to the plugin directory afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{elf, LoadProblem};

/// How long a library file must have been left alone (its modification time this far in the
/// past) before it is copied and mapped.
pub const QUIET: Duration = Duration::from_secs(1);
/// How long the loader waits for a file still being written before it refuses it.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// Between two looks at a file.
const POLL: Duration = Duration::from_millis(100);
/// Prefix of the directories of private copies, followed by the process id.
const DIR_PREFIX: &str = "weir-plugins-";

/// What tells one version of a file from another: device, inode, size, mtime (s, ns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fingerprint(u64, u64, u64, i64, i64);

impl Fingerprint {
    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.2
    }
}

/// The fingerprint of `path` (all zero when it cannot be read).
pub fn fingerprint(path: &Path) -> Fingerprint {
    look(path).map(|(f, _)| f).unwrap_or_default()
}

fn look(path: &Path) -> std::io::Result<(Fingerprint, SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((Fingerprint(m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()), m.modified()?))
}

/// Waits (up to [`SETTLE_LIMIT`]) until nobody has written `path` for [`QUIET`]; returns
/// its fingerprint then. A modification time in the future (a clock set differently
/// elsewhere) counts as settled once two looks [`POLL`] apart agree.
fn settle(path: &Path) -> Result<Fingerprint, LoadProblem> {
    let started = Instant::now();
    let mut previous: Option<Fingerprint> = None;
    loop {
        let (print, modified) = look(path).map_err(|e| LoadProblem::Unreadable(e.to_string()))?;
        let quiet = match SystemTime::now().duration_since(modified) {
            Ok(age) => age >= QUIET,
            Err(_) => previous == Some(print),
        };
        if quiet {
            return Ok(print);
        }
        if started.elapsed() >= SETTLE_LIMIT {
            return Err(LoadProblem::StillWritten { seconds: SETTLE_LIMIT.as_secs(), size: print.size() });
        }
        previous = Some(print);
        std::thread::sleep(POLL);
    }
}

/// Whether libraries on this system are ELF files (not Mach-O or PE), which [`elf`] checks.
const ELF_SYSTEM: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos",
    target_os = "solaris"
));

/// The ELF check of `path`, on systems whose libraries are ELF files.
fn check_headers(path: &Path) -> Result<(), LoadProblem> {
    if ELF_SYSTEM {
        elf::inspect_file(path).map(|_| ()).map_err(LoadProblem::Elf)
    } else {
        Ok(())
    }
}

/// This process's directory of private copies, `$TMPDIR/weir-plugins-<pid>`.
pub fn copies_dir() -> PathBuf {
    std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()))
}

/// Makes the private copy of `path` that will be mapped: once the file has settled, copies
/// it, checks that the original did not change meanwhile, and checks the copy's ELF headers
/// (the copy is what is mapped). Returns the copy and the original's fingerprint.
pub fn private_copy(path: &Path) -> Result<(PathBuf, Fingerprint), LoadProblem> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let started = Instant::now();
    loop {
        let before = settle(path)?;
        // Refuse a file that cannot be a library before copying it anywhere.
        check_headers(path)?;
        let dir = copies_dir();
        std::fs::create_dir_all(&dir).map_err(|e| LoadProblem::CopiesDirectory { dir: dir.clone(), error: e.to_string() })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let copy = dir.join(format!("{}-{name}", NEXT.fetch_add(1, Relaxed)));
        std::fs::copy(path, &copy).map_err(|e| LoadProblem::CannotCopy { copy: copy.clone(), error: e.to_string() })?;
        if fingerprint(path) != before {
            // Written to while being copied: the copy may mix two versions.
            let _ = std::fs::remove_file(&copy);
            if started.elapsed() < SETTLE_LIMIT {
                continue;
            }
            return Err(LoadProblem::ChangedWhileCopied);
        }
        let checked = check_headers(&copy).and_then(|()| {
            let size = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
            if size == before.size() {
                Ok(())
            } else {
                Err(LoadProblem::CopySize { copy: copy.clone(), size, expected: before.size(), dir: dir.clone() })
            }
        });
        if let Err(problem) = checked {
            let _ = std::fs::remove_file(&copy);
            return Err(problem);
        }
        return Ok((copy, before));
    }
}

/// Removes this process's directory of private copies (at exit; mapped copies stay valid
/// until the process ends, as unlinked files do).
pub fn remove_private_copies() {
    let dir = copies_dir();
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(path = %dir.display(), error = %e, "Cannot remove the private copies of plugin libraries.");
        }
    }
}

/// Removes the directories of private copies that processes which no longer exist left in
/// `$TMPDIR` (killed before they could remove them). Returns what was removed.
pub fn remove_stale_copies() -> Vec<PathBuf> {
    remove_stale_copies_in(&std::env::temp_dir())
}

fn remove_stale_copies_in(tmp: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    // Without /proc there is no cheap way to tell a dead process from a live one here.
    if !Path::new("/proc/self").exists() {
        return removed;
    }
    let Ok(entries) = std::fs::read_dir(tmp) else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        // Only directories this user may remove; another user's stay.
        if entry.file_type().is_ok_and(|t| t.is_dir()) && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_just_now_waits_until_it_has_been_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libx.so");
        std::fs::write(&path, b"x").unwrap();
        let started = Instant::now();
        let print = settle(&path).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(800), "{:?}", started.elapsed());
        assert_eq!(print.size(), 1);
    }

    #[test]
    fn stale_directories_of_dead_processes_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = tmp.path().join(format!("{DIR_PREFIX}{dead}"));
        let mine = tmp.path().join(format!("{DIR_PREFIX}{}", std::process::id()));
        let other = tmp.path().join(format!("{DIR_PREFIX}notapid"));
        for d in [&stale, &mine, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("1-libx.so"), b"x").unwrap();
        }
        assert_eq!(remove_stale_copies_in(tmp.path()), vec![stale.clone()]);
        assert!(!stale.exists() && mine.exists() && other.exists());
    }
}
