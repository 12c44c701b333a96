//! The disk buffer in front of a sink: an append-only log of batches in segment files, each
//! frame checksummed, with a persisted read position.
//!
//! Frame: `WEIR` magic, payload length (u32 LE), CRC-32 of the payload (u32 LE), payload.
//! Payload: record count (u32), then per record: key length (u32, `u32::MAX` for none) and
//! key, headers length and encoded headers, value length and value, timestamp (i64).
//! `position` holds the segment and offset of the first frame not yet delivered, replaced
//! atomically. On open, frames after that position are checked; a truncated or corrupted
//! tail is reported, cut off, and everything before it is delivered.
//!
//! One directory is one log in the process: the versions of a pipeline that overlap during a
//! reload share it ([`DiskLog::shared`]). Each version writes to it while it runs; one sink
//! thread reads at a time, and the old version's reader hands over to the new one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use weir_plugin::batch::{BatchBuf, BatchRef};

use crate::error::HostError;

/// `e` about `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HostError + '_ {
    move |source| HostError::DiskBuffer { path: path.to_path_buf(), source }
}
use weir_plugin::Head;

const MAGIC: &[u8; 4] = b"WEIR";
const HEADER: usize = 12;
/// A segment is closed after this many bytes and a new one started.
const SEGMENT_BYTES: u64 = 8 << 20;

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes a batch as a frame payload.
pub fn encode(batch: &BatchRef<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.data_len() + batch.len() * 24 + 4);
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    for r in batch.iter() {
        match r.key {
            Some(k) => put(&mut out, k),
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
        put(&mut out, r.headers_raw);
        put(&mut out, r.value);
        out.extend_from_slice(&r.timestamp_ms.unwrap_or(i64::MIN).to_le_bytes());
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Decodes a frame payload back into a batch.
pub fn decode(payload: &[u8]) -> Option<BatchBuf> {
    let mut r = Reader(payload);
    let count = r.u32()? as usize;
    let mut batch = BatchBuf::with_capacity(count.min(1 << 20), payload.len());
    for i in 0..count {
        let key = match r.u32()? {
            u32::MAX => None,
            n => Some(r.take(n as usize)?),
        };
        let headers = r.bytes()?;
        let value = r.bytes()?;
        let ts = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let head = Head { key, headers_raw: headers, extra_headers: &[], timestamp_ms: (ts != i64::MIN).then_some(ts) };
        batch.push(i as u32, head, value);
    }
    r.0.is_empty().then_some(batch)
}

/// Where the next frame to deliver starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Segment number.
    pub segment: u64,
    /// Byte offset in it.
    pub offset: u64,
}

struct State {
    /// Segments on disk, oldest first, with their sizes.
    segments: Vec<(u64, u64)>,
    /// Next frame to read.
    read: Position,
    /// Bytes held (written, not yet delivered).
    held: u64,
    writer: Option<File>,
    /// Pipeline versions writing to it; with none left, `next` stops waiting once all is read.
    writers: usize,
}

/// A disk buffer.
pub struct DiskLog {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    changed: Condvar,
    /// Held by the sink thread reading the log: one reader at a time.
    reader: Mutex<()>,
    /// Readers waiting for `reader`.
    waiting: AtomicUsize,
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Frames waiting to be delivered.
    pub pending_frames: u64,
    /// A corrupted or truncated tail, cut off: where and why.
    pub corruption: Option<String>,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.seg"))
}

/// Reads the frame at `offset` of `file`: `Ok(Some(payload))`, `Ok(None)` at the clean end,
/// `Err(why)` for a truncated or corrupted frame.
fn read_frame(file: &mut File, offset: u64, len: u64) -> Result<Option<Vec<u8>>, String> {
    if offset == len {
        return Ok(None);
    }
    if len - offset < HEADER as u64 {
        return Err(format!("a frame header is cut short ({} of {HEADER} bytes)", len - offset));
    }
    let mut header = [0u8; HEADER];
    file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_exact(&mut header)).map_err(|e| e.to_string())?;
    if &header[..4] != MAGIC {
        return Err("a frame does not start with the WEIR mark".into());
    }
    let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64;
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if len - offset - (HEADER as u64) < size {
        return Err(format!("a frame of {size} bytes is cut short at {} bytes", len - offset - HEADER as u64));
    }
    let mut payload = vec![0u8; size as usize];
    file.read_exact(&mut payload).map_err(|e| e.to_string())?;
    if crc32fast::hash(&payload) != crc {
        return Err("a frame's checksum does not match its contents".into());
    }
    Ok(Some(payload))
}

impl DiskLog {
    /// Opens (or creates) the buffer in `dir`, checking every frame not yet delivered.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(DiskLog, Opened), HostError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut segments: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        segments.sort_unstable();
        let read = std::fs::read_to_string(dir.join("position"))
            .ok()
            .and_then(|t| {
                let (s, o) = t.trim().split_once(':')?;
                Some(Position { segment: s.parse().ok()?, offset: o.parse().ok()? })
            })
            .unwrap_or(Position { segment: segments.first().copied().unwrap_or(0), offset: 0 });
        let mut opened = Opened::default();
        let mut kept = Vec::new();
        let mut held = 0;
        for &n in &segments {
            let path = segment_path(dir, n);
            if n < read.segment {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let mut file = OpenOptions::new().read(true).write(true).open(&path).map_err(io(&path))?;
            let len = file.metadata().map_err(io(&path))?.len();
            let mut offset = if n == read.segment { read.offset.min(len) } else { 0 };
            let start = offset;
            loop {
                match read_frame(&mut file, offset, len) {
                    Ok(Some(p)) => {
                        offset += (HEADER + p.len()) as u64;
                        opened.pending_frames += 1;
                    }
                    Ok(None) => break,
                    Err(why) => {
                        opened.corruption = Some(format!("{} at byte {offset}: {why}; cut off there", path.display()));
                        file.set_len(offset).map_err(io(&path))?;
                        break;
                    }
                }
            }
            held += offset - start;
            kept.push((n, offset));
            if opened.corruption.is_some() {
                // Later segments were written after the damage; they are not trusted either.
                for &later in segments.iter().filter(|&&m| m > n) {
                    let _ = std::fs::remove_file(segment_path(dir, later));
                }
                break;
            }
        }
        let read = if kept.iter().any(|(n, _)| *n == read.segment) {
            read
        } else {
            Position { segment: kept.first().map_or(0, |k| k.0), offset: 0 }
        };
        let state = State { segments: kept, read, held, writer: None, writers: 0 };
        let log = DiskLog {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
            changed: Condvar::new(),
            reader: Mutex::new(()),
            waiting: AtomicUsize::new(0),
        };
        Ok((log, opened))
    }

    /// The log in `dir` for one more writer: the one another version of the pipeline has
    /// open, or else opened now (then with what opening found).
    pub fn shared(dir: &Path, max_bytes: u64) -> Result<(Arc<DiskLog>, Option<Opened>), HostError> {
        static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<DiskLog>>>> = OnceLock::new();
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = dir.canonicalize().map_err(io(dir))?;
        let mut open = OPEN.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, log| log.strong_count() > 0);
        let (log, opened) = match open.get(&key).and_then(Weak::upgrade) {
            Some(log) => (log, None),
            None => {
                let (log, opened) = DiskLog::open(&key, max_bytes)?;
                let log = Arc::new(log);
                open.insert(key, Arc::downgrade(&log));
                (log, Some(opened))
            }
        };
        log.state.lock().unwrap_or_else(|p| p.into_inner()).writers += 1;
        Ok((log, opened))
    }

    /// Becomes the log's reader, waiting while another sink thread reads it.
    pub fn read_lock(&self) -> MutexGuard<'_, ()> {
        self.waiting.fetch_add(1, Relaxed);
        let guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        self.waiting.fetch_sub(1, Relaxed);
        guard
    }

    /// Whether a sink thread waits to read (a newer version of the pipeline).
    pub fn reader_waiting(&self) -> bool {
        self.waiting.load(Relaxed) > 0
    }

    /// Appends a batch and syncs it to disk. With `wait`, waits for room while the buffer
    /// is full (unless `give_up` says stop); without, returns `Ok(false)` when full.
    pub fn append(&self, batch: &BatchRef<'_>, wait: bool, give_up: &dyn Fn() -> bool) -> Result<bool, HostError> {
        let payload = encode(batch);
        let size = (HEADER + payload.len()) as u64;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.held > 0 && st.held + size > self.max_bytes {
            if !wait || give_up() {
                return Ok(false);
            }
            st = self.changed.wait_timeout(st, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
        let need_new = match st.segments.last() {
            None => true,
            Some(&(_, len)) => len >= SEGMENT_BYTES || st.writer.is_none(),
        };
        if need_new {
            let n = match st.segments.last() {
                Some(&(n, len)) if len < SEGMENT_BYTES => n,
                Some(&(n, _)) => n + 1,
                None => st.read.segment,
            };
            let path = segment_path(&self.dir, n);
            let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
            if st.segments.last().map(|s| s.0) != Some(n) {
                st.segments.push((n, 0));
            }
            st.writer = Some(file);
        }
        let mut frame = Vec::with_capacity(size as usize);
        frame.extend_from_slice(MAGIC);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let writer = st.writer.as_mut().expect("opened above");
        writer.write_all(&frame).and_then(|_| writer.sync_data()).map_err(io(&self.dir))?;
        if let Some(last) = st.segments.last_mut() {
            last.1 += size;
        }
        st.held += size;
        self.changed.notify_all();
        Ok(true)
    }

    /// The next batch to deliver and where the one after it starts, waiting up to `wait`.
    pub fn next(&self, wait: Duration) -> Result<Option<(BatchBuf, Position)>, HostError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let read = st.read;
            let seg = st.segments.iter().find(|s| s.0 == read.segment).copied();
            match seg {
                Some((n, len)) if read.offset < len => {
                    let path = segment_path(&self.dir, n);
                    let mut file = File::open(&path).map_err(io(&path))?;
                    let damaged = |why: &str| HostError::Damaged { path: path.clone(), offset: read.offset, why: why.to_owned() };
                    let payload = read_frame(&mut file, read.offset, len)
                        .map_err(|why| damaged(&why))?
                        .ok_or_else(|| damaged("the frame is gone"))?;
                    let batch = decode(&payload).ok_or_else(|| damaged("the frame is not a batch"))?;
                    return Ok(Some((batch, Position { segment: n, offset: read.offset + (HEADER + payload.len()) as u64 })));
                }
                Some((n, _)) if st.segments.iter().any(|s| s.0 > n) => {
                    // This segment is done: move on and remove it.
                    let next = st.segments.iter().find(|s| s.0 > n).map(|s| s.0).unwrap_or(n + 1);
                    st.read = Position { segment: next, offset: 0 };
                    st.segments.retain(|s| s.0 != n);
                    let _ = std::fs::remove_file(segment_path(&self.dir, n));
                    continue;
                }
                _ if st.writers == 0 => return Ok(None),
                _ => {}
            }
            let (guard, timeout) = self.changed.wait_timeout(st, wait).unwrap_or_else(|p| p.into_inner());
            st = guard;
            if timeout.timed_out() {
                return Ok(None);
            }
        }
    }

    /// Records that everything before `to` was delivered.
    pub fn commit(&self, to: Position) -> Result<(), HostError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let freed = if to.segment == st.read.segment { to.offset.saturating_sub(st.read.offset) } else { to.offset };
        st.read = to;
        st.held = st.held.saturating_sub(freed);
        let tmp = self.dir.join("position.tmp");
        std::fs::write(&tmp, format!("{}:{}\n", to.segment, to.offset))
            .and_then(|_| std::fs::rename(&tmp, self.dir.join("position")))
            .map_err(io(&self.dir))?;
        self.changed.notify_all();
        Ok(())
    }

    /// One writer is done: once none is left, `next` returns `None` when everything
    /// written was read.
    pub fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.writers = st.writers.saturating_sub(1);
        self.changed.notify_all();
    }

    /// No writer left, and everything written was delivered.
    pub fn is_drained(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.writers == 0 && st.held == 0
    }

    /// Bytes waiting.
    pub fn held(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_what_the_system_said() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, "x").unwrap();
        let e = DiskLog::open(&file, 1 << 20).err().unwrap();
        assert!(matches!(&e, HostError::DiskBuffer { path, .. } if path == &file), "{e:?}");
        assert_eq!(e.class(), crate::error::Class::Internal);
        assert!(e.to_string().starts_with(&format!("disk buffer {}: ", file.display())), "{e}");
    }

    fn batch(values: &[&str]) -> BatchBuf {
        let mut b = BatchBuf::new();
        for (i, v) in values.iter().enumerate() {
            b.push(
                i as u32,
                Head { key: Some(b"k"), extra_headers: &[("h", b"1")], timestamp_ms: Some(7), ..Default::default() },
                v.as_bytes(),
            );
        }
        b
    }

    fn values(b: &BatchBuf) -> Vec<String> {
        b.as_ref().iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()).collect()
    }

    #[test]
    fn batches_come_back_in_order_and_survive_a_reopen_from_the_committed_position() {
        let dir = tempfile::tempdir().unwrap();
        let (log, opened) = DiskLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(opened.pending_frames, 0);
        for v in ["a", "b", "c"] {
            assert!(log.append(&batch(&[v]).as_ref(), true, &|| false).unwrap());
        }
        let (first, pos) = log.next(Duration::ZERO).unwrap().unwrap();
        assert_eq!(values(&first), ["a"]);
        let r = first.as_ref().get(0);
        assert_eq!((r.key, r.header("h"), r.timestamp_ms), (Some(&b"k"[..]), Some(&b"1"[..]), Some(7)));
        log.commit(pos).unwrap();
        drop(log);
        let (log, opened) = DiskLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(opened.pending_frames, 2);
        assert!(opened.corruption.is_none());
        let (b, pos) = log.next(Duration::ZERO).unwrap().unwrap();
        assert_eq!(values(&b), ["b"]);
        log.commit(pos).unwrap();
        let (c, pos) = log.next(Duration::ZERO).unwrap().unwrap();
        assert_eq!(values(&c), ["c"]);
        log.commit(pos).unwrap();
        assert!(log.next(Duration::from_millis(10)).unwrap().is_none());
        assert_eq!(log.held(), 0);
    }

    #[test]
    fn a_truncated_or_corrupted_tail_is_reported_and_cut_and_the_rest_delivered() {
        for damage in ["truncate", "flip"] {
            let dir = tempfile::tempdir().unwrap();
            let (log, _) = DiskLog::open(dir.path(), 1 << 20).unwrap();
            for v in ["one", "two", "three"] {
                log.append(&batch(&[v]).as_ref(), true, &|| false).unwrap();
            }
            drop(log);
            let seg = segment_path(dir.path(), 0);
            let mut bytes = std::fs::read(&seg).unwrap();
            match damage {
                "truncate" => bytes.truncate(bytes.len() - 3),
                _ => *bytes.last_mut().unwrap() ^= 0xff,
            }
            std::fs::write(&seg, &bytes).unwrap();
            let (log, opened) = DiskLog::open(dir.path(), 1 << 20).unwrap();
            let why = opened.corruption.expect("reported");
            assert!(why.contains(if damage == "truncate" { "cut short" } else { "checksum" }), "{why}");
            assert_eq!(opened.pending_frames, 2, "{damage}");
            let mut got = Vec::new();
            while let Some((b, pos)) = log.next(Duration::ZERO).unwrap() {
                got.extend(values(&b));
                log.commit(pos).unwrap();
            }
            assert_eq!(got, ["one", "two"]);
            // Appends go on after the cut.
            log.append(&batch(&["four"]).as_ref(), true, &|| false).unwrap();
            assert_eq!(values(&log.next(Duration::ZERO).unwrap().unwrap().0), ["four"]);
        }
    }

    #[test]
    fn a_full_buffer_refuses_or_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = DiskLog::open(dir.path(), 100).unwrap();
        assert!(log.append(&batch(&[&"x".repeat(60)]).as_ref(), false, &|| false).unwrap());
        assert!(!log.append(&batch(&[&"y".repeat(60)]).as_ref(), false, &|| false).unwrap(), "full");
        assert!(!log.append(&batch(&["z"]).as_ref(), true, &|| true).unwrap(), "gave up waiting");
        let (_, pos) = log.next(Duration::ZERO).unwrap().unwrap();
        log.commit(pos).unwrap();
        assert!(log.append(&batch(&[&"y".repeat(60)]).as_ref(), false, &|| false).unwrap(), "room again");
    }
}
