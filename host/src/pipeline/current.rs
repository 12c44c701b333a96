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
}

impl Current {
    pub(super) fn view(&self) -> BatchRef<'_> {
        match self {
            Current::Host(b) => b.as_ref(),
            // Checked when it was received, so this cannot fail.
            Current::Plugin(o) => o.batch().unwrap_or(BatchRef::EMPTY),
            // Descriptors of a checked batch over its own data, so this cannot fail either.
            Current::Kept { base, metas } => BatchRef::new(base.view().data(), metas).unwrap_or(BatchRef::EMPTY),
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
