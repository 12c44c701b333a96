//! Batches: one contiguous data buffer plus a descriptor per record (see `ABI.md`).
//!
//! [`BatchBuf`] builds a batch; [`BatchRef`] reads one, whether it was built here or
//! received across the plugin boundary.

use crate::abi::{BatchView, RecordMeta, Rejection, ABSENT};

/// Why a batch received across the boundary could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// A null pointer with a non-zero length.
    #[error("batch has a null pointer with a non-zero length")]
    Null,
    /// A record's part lies outside the data buffer.
    #[error("record {index}: its {part} ({offset}+{len}) lies outside the {data_len}-byte data buffer")]
    OutOfBounds {
        /// Record index.
        index: usize,
        /// `key`, `value` or `headers`.
        part: &'static str,
        /// Offset of the part.
        offset: u32,
        /// Length of the part.
        len: u32,
        /// Length of the data buffer.
        data_len: usize,
    },
    /// The encoded headers of a record are malformed.
    #[error("record {index}: malformed headers")]
    Headers {
        /// Record index.
        index: usize,
    },
    /// The batch grew past what 32-bit offsets can address.
    #[error("batch data exceeds 4 GiB")]
    TooLarge,
}

/// One record, borrowed from a batch.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// The value (for most pipelines a JSON document).
    pub value: &'a [u8],
    /// Encoded headers (see [`RecordRef::headers`]).
    pub headers_raw: &'a [u8],
    /// Milliseconds since the Unix epoch, if known.
    pub timestamp_ms: Option<i64>,
}

impl<'a> RecordRef<'a> {
    /// Iterates over the headers as `(name, value)`.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter { rest: self.headers_raw }
    }

    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Iterator over encoded headers.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
}

fn take_u32(buf: &[u8]) -> Option<(usize, &[u8])> {
    let (len, rest) = buf.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*len) as usize, rest))
}

/// One header, `(name, value)`.
type Header<'a> = (&'a str, &'a [u8]);

fn split_header(buf: &[u8]) -> Option<(Header<'_>, &[u8])> {
    let (name_len, rest) = take_u32(buf)?;
    let name = std::str::from_utf8(rest.get(..name_len)?).ok()?;
    let (value_len, rest) = take_u32(&rest[name_len..])?;
    let value = rest.get(..value_len)?;
    Some(((name, value), &rest[value_len..]))
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let (item, rest) = split_header(self.rest)?;
        self.rest = rest;
        Some(item)
    }
}

fn headers_valid(mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        match split_header(buf) {
            Some((_, rest)) => buf = rest,
            None => return false,
        }
    }
    true
}

/// Appends one encoded header to `out`.
pub fn encode_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// A borrowed batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    data: &'a [u8],
    metas: &'a [RecordMeta],
}

impl<'a> BatchRef<'a> {
    /// A batch with no records.
    pub const EMPTY: BatchRef<'static> = BatchRef { data: &[], metas: &[] };

    /// Reads a batch from its parts, checking every record lies inside `data`.
    pub fn new(data: &'a [u8], metas: &'a [RecordMeta]) -> Result<Self, BatchError> {
        for (index, m) in metas.iter().enumerate() {
            let check = |part, offset: u32, len: u32| {
                let end = offset as usize + len as usize;
                if end > data.len() {
                    Err(BatchError::OutOfBounds { index, part, offset, len, data_len: data.len() })
                } else {
                    Ok(())
                }
            };
            if m.key_len != ABSENT {
                check("key", m.key_off, m.key_len)?;
            }
            check("value", m.value_off, m.value_len)?;
            check("headers", m.headers_off, m.headers_len)?;
            let h = &data[m.headers_off as usize..m.headers_off as usize + m.headers_len as usize];
            if !headers_valid(h) {
                return Err(BatchError::Headers { index });
            }
        }
        Ok(BatchRef { data, metas })
    }

    /// A batch from parts already checked against each other by [`BatchRef::new`] (or
    /// descriptors picked from such a batch, over its data): not checked again. Were a part
    /// out of bounds after all, reading it would panic, never read outside `data`.
    pub fn from_checked(data: &'a [u8], metas: &'a [RecordMeta]) -> Self {
        BatchRef { data, metas }
    }

    /// The memory a view points to.
    ///
    /// # Safety
    /// As [`BatchRef::from_view`].
    #[allow(unsafe_code)]
    unsafe fn parts(view: &BatchView) -> Result<(&'a [u8], &'a [RecordMeta]), BatchError> {
        let count = view.count as usize;
        if (view.data.is_null() && view.data_len > 0) || (view.records.is_null() && count > 0) {
            return Err(BatchError::Null);
        }
        let data = if view.data_len == 0 { &[][..] } else { std::slice::from_raw_parts(view.data, view.data_len) };
        let metas = if count == 0 { &[][..] } else { std::slice::from_raw_parts(view.records, count) };
        Ok((data, metas))
    }

    /// Reads a batch received across the boundary.
    ///
    /// # Safety
    /// The pointers in `view` must be valid for `'a` as `ABI.md` requires.
    #[allow(unsafe_code)]
    pub unsafe fn from_view(view: &BatchView) -> Result<Self, BatchError> {
        let (data, metas) = Self::parts(view)?;
        BatchRef::new(data, metas)
    }

    /// Reads a batch received across the boundary that [`BatchRef::from_view`] accepted
    /// before (the same unchanged memory), without checking its records again.
    ///
    /// # Safety
    /// As [`BatchRef::from_view`].
    #[allow(unsafe_code)]
    pub unsafe fn from_view_checked(view: &BatchView) -> Result<Self, BatchError> {
        let (data, metas) = Self::parts(view)?;
        Ok(BatchRef::from_checked(data, metas))
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// Total bytes of the data buffer.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The data buffer.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The record descriptors, one per record.
    pub fn metas(&self) -> &'a [RecordMeta] {
        self.metas
    }

    /// The record at `index`. Panics when out of range.
    pub fn get(&self, index: usize) -> RecordRef<'a> {
        let m = &self.metas[index];
        let part = |off: u32, len: u32| &self.data[off as usize..off as usize + len as usize];
        RecordRef {
            key: (m.key_len != ABSENT).then(|| part(m.key_off, m.key_len)),
            value: part(m.value_off, m.value_len),
            headers_raw: part(m.headers_off, m.headers_len),
            timestamp_ms: (m.timestamp_ms != i64::MIN).then_some(m.timestamp_ms),
        }
    }

    /// Iterates over the records.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'a>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Copies the batch, data and descriptors wholesale; each record is its own origin.
    pub fn to_owned(&self) -> BatchBuf {
        BatchBuf { data: self.data.to_vec(), metas: self.metas.to_vec(), origins: (0..self.metas.len() as u32).collect() }
    }

    /// The raw view, pointing into the borrowed memory.
    pub fn view(&self) -> BatchView {
        BatchView {
            struct_size: std::mem::size_of::<BatchView>() as u32,
            count: self.metas.len() as u32,
            data: self.data.as_ptr(),
            data_len: self.data.len(),
            records: self.metas.as_ptr(),
        }
    }
}

/// The parts of a new record other than its value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Head<'a> {
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// Headers already encoded (for example copied from an input record).
    pub headers_raw: &'a [u8],
    /// Further headers to append.
    pub extra_headers: &'a [(&'a str, &'a [u8])],
    /// Milliseconds since the Unix epoch, if known.
    pub timestamp_ms: Option<i64>,
}

impl<'a> From<&RecordRef<'a>> for Head<'a> {
    fn from(r: &RecordRef<'a>) -> Self {
        Head { key: r.key, headers_raw: r.headers_raw, extra_headers: &[], timestamp_ms: r.timestamp_ms }
    }
}

/// An owned batch under construction. For transforms each record also remembers the
/// index of the input record it came from (its origin).
#[derive(Debug, Default, Clone)]
pub struct BatchBuf {
    data: Vec<u8>,
    metas: Vec<RecordMeta>,
    origins: Vec<u32>,
}

impl BatchBuf {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `records` records and `bytes` bytes of data.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        BatchBuf { data: Vec::with_capacity(bytes), metas: Vec::with_capacity(records), origins: Vec::with_capacity(records) }
    }

    /// Removes every record, keeping the memory.
    pub fn clear(&mut self) {
        self.data.clear();
        self.metas.clear();
        self.origins.clear();
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// Bytes of data.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The origin of each record.
    pub fn origins(&self) -> &[u32] {
        &self.origins
    }

    fn offset(&self) -> u32 {
        // Offsets are checked when the batch is read; a batch over 4 GiB is refused there.
        u32::try_from(self.data.len()).unwrap_or(u32::MAX)
    }

    fn write_head(&mut self, head: &Head<'_>) -> RecordMeta {
        let mut meta = RecordMeta { key_len: ABSENT, timestamp_ms: head.timestamp_ms.unwrap_or(i64::MIN), ..Default::default() };
        if let Some(key) = head.key {
            meta.key_off = self.offset();
            self.data.extend_from_slice(key);
            meta.key_len = key.len() as u32;
        }
        meta.headers_off = self.offset();
        self.data.extend_from_slice(head.headers_raw);
        for (name, value) in head.extra_headers {
            encode_header(&mut self.data, name, value);
        }
        meta.headers_len = self.offset() - meta.headers_off;
        meta
    }

    /// Appends a record that came from input record `origin`.
    pub fn push(&mut self, origin: u32, head: Head<'_>, value: &[u8]) {
        let _ = self.push_with(origin, head, |buf| {
            buf.extend_from_slice(value);
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// Appends a record whose value `write` appends to the buffer it is given. When
    /// `write` fails, nothing is appended.
    pub fn push_with<E>(&mut self, origin: u32, head: Head<'_>, write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let mark = self.data.len();
        let mut meta = self.write_head(&head);
        meta.value_off = self.offset();
        if let Err(e) = write(&mut self.data) {
            self.data.truncate(mark);
            return Err(e);
        }
        meta.value_len = self.offset() - meta.value_off;
        self.metas.push(meta);
        self.origins.push(origin);
        Ok(())
    }

    /// Copies a record unchanged.
    pub fn push_record(&mut self, origin: u32, record: &RecordRef<'_>) {
        self.push(origin, Head::from(record), record.value);
    }

    /// Appends every record of `batch` unchanged, each with its own index as origin.
    pub fn extend_from(&mut self, batch: &BatchRef<'_>) {
        for (i, r) in batch.iter().enumerate() {
            self.push_record(i as u32, &r);
        }
    }

    /// Reads the batch.
    pub fn as_ref(&self) -> BatchRef<'_> {
        BatchRef { data: &self.data, metas: &self.metas }
    }
}

/// Records a stage refuses, with reasons.
#[derive(Debug, Default, Clone)]
pub struct Rejections {
    items: Vec<Rejection>,
    text: Vec<u8>,
}

impl Rejections {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses the record at `index` of the input batch.
    pub fn reject(&mut self, index: usize, reason: &str) {
        let off = self.text.len() as u32;
        self.text.extend_from_slice(reason.as_bytes());
        self.items.push(Rejection { index: index as u32, reason_off: off, reason_len: reason.len() as u32 });
    }

    /// Number of rejections.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Removes all.
    pub fn clear(&mut self) {
        self.items.clear();
        self.text.clear();
    }

    /// Iterates as `(index, reason)`.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &str)> + '_ {
        iter_rejections(&self.items, &self.text)
    }

    pub(crate) fn raw(&self) -> (&[Rejection], &[u8]) {
        (&self.items, &self.text)
    }
}

/// Iterates over raw rejections as `(index, reason)`, skipping any whose text is out of range.
pub fn iter_rejections<'a>(items: &'a [Rejection], text: &'a [u8]) -> impl Iterator<Item = (usize, &'a str)> + 'a {
    items.iter().filter_map(move |r| {
        let t = text.get(r.reason_off as usize..r.reason_off as usize + r.reason_len as usize)?;
        Some((r.index as usize, std::str::from_utf8(t).unwrap_or("<invalid utf-8>")))
    })
}

/// A transform's output: the new batch and the input records it refused. Input records
/// that are neither the origin of an output record nor refused count as dropped.
#[derive(Debug, Default, Clone)]
pub struct Output {
    /// The output records.
    pub batch: BatchBuf,
    /// Refused input records.
    pub rejections: Rejections,
    /// The number the SDK gave the batch being processed (unique in the library, set before
    /// `process` is called): [`crate::Transform::acknowledge`] names the batch by it once its
    /// records are delivered, refused or failed.
    pub sequence: u64,
    /// Input records passed on unchanged by [`Output::pass`] while `batch` was still empty,
    /// by index; they come before `batch`'s records. When `batch` stays empty the host is
    /// told only their indexes and keeps its own bytes of them (no copy).
    pub kept: Vec<u32>,
}

impl Output {
    /// The next batch number of this library (never 0).
    pub(crate) fn next_sequence() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends a record that came from input record `origin` (see [`BatchBuf::push`]).
    pub fn push(&mut self, origin: usize, head: Head<'_>, value: &[u8]) {
        self.batch.push(origin as u32, head, value)
    }

    /// Passes input record `origin` through unchanged: while `batch` is empty only its
    /// index is kept (see [`Output::kept`]), afterwards it is copied into `batch`.
    pub fn pass(&mut self, origin: usize, record: &RecordRef<'_>) {
        if self.batch.is_empty() {
            self.kept.push(origin as u32);
        } else {
            self.batch.push_record(origin as u32, record)
        }
    }

    /// The input records passed on, in output order: [`Output::kept`], then `batch`'s.
    pub fn passed(&self) -> impl Iterator<Item = u32> + '_ {
        self.kept.iter().chain(self.batch.origins()).copied()
    }

    /// Copies the kept records from `input` (the batch `process` was given) into `batch`,
    /// before the records already there, so `batch` holds the whole output.
    pub fn materialize(&mut self, input: &BatchRef<'_>) {
        if self.kept.is_empty() {
            return;
        }
        let rest = std::mem::take(&mut self.batch);
        let mut batch = BatchBuf::with_capacity(self.kept.len() + rest.len(), input.data_len() + rest.data_len());
        for &k in &self.kept {
            batch.push_record(k, &input.get(k as usize));
        }
        for (r, &origin) in rest.as_ref().iter().zip(rest.origins()) {
            batch.push_record(origin, &r);
        }
        self.batch = batch;
        self.kept.clear();
    }

    /// Refuses input record `index` with a reason.
    pub fn reject(&mut self, index: usize, reason: &str) {
        self.rejections.reject(index, reason)
    }

    /// Clears every part, keeping the memory (and the batch number).
    pub fn clear(&mut self) {
        self.batch.clear();
        self.kept.clear();
        self.rejections.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_passed_unchanged_are_kept_by_index_and_materialize_in_order() {
        let mut input = BatchBuf::new();
        for (i, v) in ["a", "b", "c", "d"].iter().enumerate() {
            input.push(i as u32, Head { key: Some(v.as_bytes()), ..Default::default() }, v.as_bytes());
        }
        let input = input.as_ref();
        let mut out = Output::default();
        out.pass(0, &input.get(0));
        out.pass(2, &input.get(2));
        assert_eq!((out.kept.as_slice(), out.batch.len()), (&[0, 2][..], 0), "no bytes copied while only passing");
        out.push(3, Head::default(), b"D");
        out.pass(1, &input.get(1));
        assert_eq!(out.passed().collect::<Vec<_>>(), [0, 2, 3, 1]);
        out.materialize(&input);
        assert!(out.kept.is_empty());
        let values: Vec<&[u8]> = out.batch.as_ref().iter().map(|r| r.value).collect();
        assert_eq!(values, [&b"a"[..], b"c", b"D", b"b"]);
        assert_eq!(out.batch.origins(), &[0, 2, 3, 1]);
        assert_eq!(out.batch.as_ref().get(1).key, Some(&b"c"[..]), "kept records keep their key");
    }

    #[test]
    fn round_trip_with_headers_and_keys() {
        let mut b = BatchBuf::new();
        b.push(
            0,
            Head { key: Some(b"u1"), extra_headers: &[("traceparent", b"00-abc")], timestamp_ms: Some(5), ..Default::default() },
            b"{\"a\":1}",
        );
        b.push(1, Head::default(), b"{}");
        let r = b.as_ref();
        assert_eq!(r.len(), 2);
        let first = r.get(0);
        assert_eq!(first.key, Some(&b"u1"[..]));
        assert_eq!(first.header("traceparent"), Some(&b"00-abc"[..]));
        assert_eq!(first.timestamp_ms, Some(5));
        let second = r.get(1);
        assert_eq!(second.key, None);
        assert_eq!(second.headers().count(), 0);
        assert_eq!(second.value, b"{}");
        let mut copy = BatchBuf::new();
        copy.extend_from(&r);
        assert_eq!(copy.as_ref().get(0).header("traceparent"), Some(&b"00-abc"[..]));
    }

    #[test]
    fn out_of_bounds_record_is_refused() {
        let data = b"abc";
        let metas = [RecordMeta { key_len: ABSENT, value_off: 1, value_len: 5, ..Default::default() }];
        let err = BatchRef::new(data, &metas).unwrap_err();
        assert!(matches!(err, BatchError::OutOfBounds { part: "value", .. }), "{err}");
    }

    #[test]
    fn failed_value_write_leaves_no_trace() {
        let mut b = BatchBuf::new();
        let r: Result<(), &str> = b.push_with(0, Head { key: Some(b"k"), ..Default::default() }, |v| {
            v.extend_from_slice(b"partial");
            Err("no")
        });
        assert!(r.is_err());
        assert!(b.is_empty());
        assert_eq!(b.data_len(), 0);
    }

    #[test]
    fn malformed_headers_are_refused() {
        let data = [9u8, 0, 0, 0, b'x'];
        let metas = [RecordMeta { key_len: ABSENT, headers_off: 0, headers_len: 5, ..Default::default() }];
        assert_eq!(BatchRef::new(&data, &metas).unwrap_err(), BatchError::Headers { index: 0 });
    }
}
