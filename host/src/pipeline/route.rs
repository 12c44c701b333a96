//! Routing: sinks with a `when` condition get only the records for which it holds. The
//! conditions are evaluated on the transform worker that finished the batch (in parallel
//! across workers), once per record and sink; a record is read into the expression's values
//! once for all of them.

use weir_plugin::expr::{Expr, Needs, Record};

use super::declared::{Declared, Verdict};
use super::*;
use crate::config::Unrouted;

/// The declared conditions that end a worker's transform chain (see `declared`), evaluated
/// on each record before the sinks' `when`, and what they all read of a record together.
pub(super) struct Gates {
    stages: Vec<(Arc<Declared>, Arc<str>, Arc<StageMetrics>)>,
    needs: Needs,
}

impl Gates {
    /// Gates from `stages` (each with a declared condition) for `routes`.
    pub(super) fn new(routes: &Routes, stages: &[Stage]) -> Gates {
        let stages: Vec<_> = stages.iter().filter_map(|s| s.declared.clone().map(|d| (d, s.name.clone(), s.metrics.clone()))).collect();
        let needs = stages.iter().fold(routes.needs.clone(), |n, (d, ..)| n.union(d.needs()));
        Gates { stages, needs }
    }
}

/// The routing of a pipeline whose sinks have `when` conditions.
pub(super) struct Routes {
    /// One per sink of `Heads::sinks`, in that order: its condition, or `None` to take all.
    pub(super) conditions: Vec<Option<Expr>>,
    /// The sinks' names, for reasons.
    pub(super) names: Vec<Arc<str>>,
    /// What the conditions read of a record, together.
    needs: Needs,
    pub(super) unrouted: Unrouted,
}

/// Which records of a batch each sink takes: `None` for all of them.
pub(super) type Taken = Vec<Option<Vec<u32>>>;

impl Routes {
    /// Routes from the pipeline's sinks (those fed by the transforms, in order); `None`
    /// when no sink has a condition. `sinks`: each sink's name and condition.
    pub(super) fn new(sinks: &[(Arc<str>, Option<&str>)], unrouted: Unrouted) -> Result<Option<Routes>, String> {
        if sinks.iter().all(|(_, when)| when.is_none()) {
            return Ok(None);
        }
        let conditions = sinks
            .iter()
            .map(|(name, when)| when.map(|w| Expr::condition(w).map_err(|e| format!("sink {name}: when: {e}"))).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let needs = conditions.iter().flatten().fold(Needs::nothing(), |n, c| n.union(c.needs()));
        Ok(Some(Routes { needs, conditions, names: sinks.iter().map(|(n, ..)| n.clone()).collect(), unrouted }))
    }

    /// Decides each record's sinks, after the `gates` (the chain's last stages, as their
    /// plugins would: records dropped or rejected there, and counted as theirs). A record a
    /// condition cannot be evaluated on is rejected with the reason and goes to no sink; one
    /// no sink takes is rejected as "no route" or dropped, as `unrouted` says. Refusals get
    /// their outcome and, with `letters`, their dead letter.
    pub(super) fn route(
        &self,
        batch: &BatchRef<'_>,
        origins: &[u32],
        outcomes: &mut Outcomes,
        mut letters: Option<&mut Letters>,
        gates: &Gates,
    ) -> Taken {
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); self.conditions.len()];
        let takes_all = self.conditions.iter().any(Option::is_none);
        let mut holds = vec![false; self.conditions.len()];
        // Per record, how many gates it passed; per gate, the records dropped and rejected.
        let mut passed = vec![0usize; if gates.stages.is_empty() { 0 } else { batch.len() }];
        let mut refused = vec![(0u64, 0u64); gates.stages.len()];
        'records: for (i, record) in batch.iter().enumerate() {
            let input = Record::new(record, &gates.needs);
            for (g, (declared, stage, _)) in gates.stages.iter().enumerate() {
                match declared.verdict(&input) {
                    Verdict::Keep => passed[i] = g + 1,
                    Verdict::Drop => {
                        refused[g].0 += 1;
                        outcomes.set(origins[i], outcome::DROPPED, None);
                        continue 'records;
                    }
                    Verdict::Reject(reason) => {
                        refused[g].1 += 1;
                        if let Some(letters) = letters.as_deref_mut() {
                            letters.add(&record, origins[i], stage, "rejected", &reason);
                        }
                        outcomes.set(origins[i], outcome::REJECTED, Some(Refusal::by(stage, reason)));
                        continue 'records;
                    }
                }
            }
            holds.fill(false);
            let mut failed = None;
            for (s, condition) in self.conditions.iter().enumerate() {
                match condition.as_ref().map(|c| c.test(&input)) {
                    None | Some(Ok(true)) => holds[s] = true,
                    Some(Ok(false)) => {}
                    Some(Err(e)) => {
                        failed = Some((self.names[s].clone(), format!("when: {e}")));
                        break;
                    }
                }
            }
            let refusal = match failed {
                Some(refusal) => refusal,
                None if takes_all || holds.iter().any(|h| *h) => {
                    for (list, _) in lists.iter_mut().zip(&holds).filter(|(_, h)| **h) {
                        list.push(i as u32);
                    }
                    continue;
                }
                None if self.unrouted == Unrouted::Drop => {
                    outcomes.set(origins[i], outcome::DROPPED, None);
                    continue;
                }
                None => (Arc::from("routing"), "no route: no sink's `when` holds for the record".to_owned()),
            };
            let (stage, reason) = refusal;
            if let Some(letters) = letters.as_deref_mut() {
                letters.add(&record, origins[i], &stage, "rejected", &reason);
            }
            outcomes.set(origins[i], outcome::REJECTED, Some(Refusal::by(&stage, reason)));
        }
        // Each gate's counts, as when the stage runs on its own.
        let mut reached = batch.len();
        for (g, (_, _, m)) in gates.stages.iter().enumerate() {
            let (dropped, rejected) = refused[g];
            m.batches.fetch_add(1, Relaxed);
            m.records_in.fetch_add(reached as u64, Relaxed);
            m.dropped.fetch_add(dropped, Relaxed);
            m.rejected.fetch_add(rejected, Relaxed);
            reached -= (dropped + rejected) as usize;
            m.records_out.fetch_add(reached as u64, Relaxed);
            m.tap.capture_where(batch, |i| passed[i] > g);
            if reached == 0 {
                break;
            }
        }
        let n = batch.len();
        lists.into_iter().map(|l| (l.len() != n).then_some(l)).collect()
    }
}
