//! Batch decoding at the plugin boundary: whatever record table and data a plugin hands
//! over, the host's check accepts only batches whose every record, key and header can be
//! read, and reading them never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_plugin::abi::RecordMeta;
use weir_plugin::batch::BatchRef;

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fuzz_target!(|input: &[u8]| {
    let Some((&count, rest)) = input.split_first() else { return };
    let count = (count % 16) as usize;
    if rest.len() < count * 24 {
        return;
    }
    let (table, data) = rest.split_at(count * 24);
    let metas: Vec<RecordMeta> = table
        .chunks_exact(24)
        .map(|c| RecordMeta {
            key_off: u32_at(c, 0),
            key_len: u32_at(c, 4),
            value_off: u32_at(c, 8),
            value_len: u32_at(c, 12),
            headers_off: u32_at(c, 16),
            headers_len: u32_at(c, 20),
            timestamp_ms: i64::from(c[0]),
        })
        .collect();
    // Every slice handed out lies inside the data buffer (regions may overlap: harmless).
    let (base, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
    let inside = |s: &[u8]| s.is_empty() || (s.as_ptr() as usize >= base && s.as_ptr() as usize + s.len() <= end);
    if let Ok(batch) = BatchRef::new(data, &metas) {
        for r in batch.iter() {
            assert!(inside(r.value) && r.key.is_none_or(inside) && inside(r.headers_raw));
            for (name, value) in r.headers() {
                assert!(inside(name.as_bytes()) && inside(value));
            }
            let _ = r.header("traceparent");
        }
        let copy = batch.to_owned();
        assert_eq!(copy.len(), batch.len());
    }
});
