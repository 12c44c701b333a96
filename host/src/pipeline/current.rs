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
            // Checked once when it was received.
            Current::Plugin(o) => o.checked_batch(),
            // Descriptors of a checked batch over its own data.
            Current::Kept { base, metas } => BatchRef::from_checked(base.view().data(), metas),
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
