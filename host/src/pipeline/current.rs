//! A batch between stages, without copies: the host's, a plugin's output, or some records
//! of either passed on unchanged.

use super::*;

/// A batch between stages: built by the host or owned by a plugin.
pub(super) enum Current {
    Host(BatchBuf),
    Plugin(ForeignOutput),
    /// Some records of `base`, unchanged: a transform passed them on by index.
    Kept {
        base: Box<Current>,
        metas: Vec<RecordMeta>,
    },
    /// Some records of a batch other sinks read too: those a sink's `when` takes.
    Routed {
        base: Arc<Current>,
        metas: Vec<RecordMeta>,
    },
}

impl Current {
    pub(super) fn view(&self) -> BatchRef<'_> {
        match self {
            Current::Host(b) => b.as_ref(),
            // Checked once when it was received.
            Current::Plugin(o) => o.checked_batch(),
            // Descriptors of a checked batch over its own data.
            Current::Kept { base, metas } => BatchRef::from_checked(base.view().data(), metas),
            Current::Routed { base, metas } => BatchRef::from_checked(base.view().data(), metas),
        }
    }

    /// Bytes its records hold (keys, values, headers), as sink buffers count them: for kept
    /// records only theirs, not the whole buffer they sit in.
    pub(super) fn bytes(&self) -> usize {
        match self {
            Current::Kept { metas, .. } | Current::Routed { metas, .. } => metas
                .iter()
                .map(|m| if m.key_len == weir_plugin::abi::ABSENT { 0 } else { m.key_len as usize } + m.value_len as usize + m.headers_len as usize)
                .sum(),
            other => other.view().data_len(),
        }
    }

    /// The records `origins` names, in that order, without copying their bytes (`origins`
    /// was checked against the batch).
    pub(super) fn keep(self, origins: &[u32]) -> Current {
        let view = self.view();
        if origins.len() == view.len() && origins.iter().enumerate().all(|(i, &o)| o as usize == i) {
            return self;
        }
        let metas = origins.iter().map(|&o| view.metas()[o as usize]).collect();
        let base = match self {
            Current::Kept { base, .. } => base,
            other => Box::new(other),
        };
        Current::Kept { base, metas }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::Head;

    #[test]
    fn kept_records_are_picked_without_copies_and_counted_alone() {
        let mut b = BatchBuf::new();
        b.push(0, Head { key: Some(b"k0"), ..Default::default() }, b"first-value");
        b.push(1, Head::default(), b"second");
        b.push(2, Head::default(), b"third!");
        let whole = Current::Host(b);
        assert_eq!(whole.bytes(), whole.view().data_len());
        let kept = whole.keep(&[2, 0]);
        let view = kept.view();
        let values: Vec<&[u8]> = view.iter().map(|r| r.value).collect();
        assert_eq!(values, [&b"third!"[..], b"first-value"]);
        assert_eq!(view.get(1).key, Some(&b"k0"[..]));
        assert_eq!(kept.bytes(), 6 + 2 + 11, "only the kept records' key and value bytes");
        let again = kept.keep(&[1]);
        assert_eq!(again.view().get(0).value, b"first-value", "a selection of a selection reads the first buffer");
        let all = Current::Host(BatchBuf::new()).keep(&[]);
        assert!(matches!(all, Current::Host(_)), "keeping everything keeps the batch as it is");
    }
}
