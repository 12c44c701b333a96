//! Transforms whose whole work is a condition they declare (ABI minor 7, such as `filter`):
//! the host evaluates the condition itself instead of calling the plugin. A record is then
//! read once for such a stage and the sinks' `when` together when the stage is the last
//! transform (see `route`); elsewhere the host still spares the plugin call and the copy of
//! its output.

use weir_plugin::expr::{Expr, Needs, Record};
use weir_plugin::{Condition, OnError};

use super::*;

/// A transform's declared condition, ready to evaluate.
pub(super) struct Declared {
    expr: Expr,
    keeps: bool,
    on_error: OnError,
}

/// What a declared condition makes of one record.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    Keep,
    Drop,
    /// Rejected, with the reason.
    Reject(String),
}

impl Declared {
    /// The condition `instance` declares; `None` when it declares none, or one this host
    /// cannot take (then the host calls the plugin as before, and says why once).
    pub(super) fn of(instance: &mut Instance, stage: &str) -> Option<Arc<Declared>> {
        let text = match instance.condition() {
            Ok(text) => text?,
            Err(e) => {
                tracing::warn!(stage, error = %e, "The transform's declared condition could not be read; the plugin processes its batches.");
                return None;
            }
        };
        match Declared::read(&text) {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tracing::warn!(stage, error = %e, "The transform declares a condition this host cannot evaluate; the plugin processes its batches.");
                None
            }
        }
    }

    /// A declaration as the ABI gives it (`Condition` as JSON).
    pub(super) fn read(json: &str) -> Result<Declared, String> {
        let c: Condition = weir_plugin::serde_json::from_str(json).map_err(|e| format!("not a condition: {e}"))?;
        let expr = Expr::condition(&c.expression).map_err(|e| format!("{} (column {} of {:?})", e.message, e.column, c.expression))?;
        Ok(Declared { expr, keeps: c.keeps, on_error: c.on_error })
    }

    /// What the condition reads of a record.
    pub(super) fn needs(&self) -> &Needs {
        self.expr.needs()
    }

    /// The verdict on one record read for at least [`Declared::needs`]; the same as the
    /// `filter` plugin's for the same condition.
    pub(super) fn verdict(&self, input: &Record<'_>) -> Verdict {
        match self.expr.test(input) {
            Ok(holds) if holds == self.keeps => Verdict::Keep,
            Ok(_) => Verdict::Drop,
            Err(e) => match self.on_error {
                OnError::Reject => Verdict::Reject(e.to_string()),
                OnError::Drop => Verdict::Drop,
                OnError::Keep => Verdict::Keep,
            },
        }
    }

    /// Runs the condition over a batch as the stage's work: the records kept (as indexes)
    /// and those rejected with their reasons.
    pub(super) fn run(&self, input: &BatchRef<'_>) -> (Vec<u32>, Vec<(usize, String)>) {
        let (mut kept, mut rejected) = (Vec::with_capacity(input.len()), Vec::new());
        for (i, record) in input.iter().enumerate() {
            match self.verdict(&Record::new(record, self.needs())) {
                Verdict::Keep => kept.push(i as u32),
                Verdict::Drop => {}
                Verdict::Reject(reason) => rejected.push((i, reason)),
            }
        }
        (kept, rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::json_batch;

    #[test]
    fn keeps_drops_and_rejects_as_declared() {
        let b = json_batch([r#"{"n":1}"#, r#"{"n":2}"#, r#"{"m":3}"#, r#"{"n":3}"#]);
        let keep = Declared::read(r#"{"expression":"record.n > 1","keeps":true,"on_error":"reject"}"#).unwrap();
        let (kept, rejected) = keep.run(&b.as_ref());
        assert_eq!(kept, [1, 3]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, 2);
        assert!(rejected[0].1.contains("record.n > 1"), "{rejected:?}");
        let drop = Declared::read(r#"{"expression":"record.n > 1","keeps":false,"on_error":"keep"}"#).unwrap();
        assert_eq!(drop.run(&b.as_ref()), (vec![0, 2], vec![]));
        let lenient = Declared::read(r#"{"expression":"record.n > 1","keeps":true,"on_error":"drop"}"#).unwrap();
        assert_eq!(lenient.run(&b.as_ref()), (vec![1, 3], vec![]));
    }

    #[test]
    fn a_declaration_the_host_cannot_take_says_why() {
        assert!(Declared::read("{}").err().unwrap().starts_with("not a condition"));
        let e = Declared::read(r#"{"expression":"record.n >","keeps":true,"on_error":"reject"}"#).err().unwrap();
        assert!(e.contains("column") && e.contains("record.n >"), "{e}");
    }
}
