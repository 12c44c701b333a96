//! The `filter` transform: keeps or drops each record by a CEL condition over `record`,
//! `key` and `headers` (see `weir_plugin::expr`). Dropped records are counted, as
//! duplicates are; a record the condition cannot be evaluated on is rejected with the
//! reason by default.

use weir_plugin::expr::{Expr, Record};
use weir_plugin::{BatchRef, Condition, Context, Deserialize, JsonSchema, OnError, Output, PluginError, Transform};

/// Config of the `filter` transform: exactly one of `keep` and `drop`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Keep only the records for which this condition holds (`record.type != "heartbeat"`).
    #[serde(default)]
    pub keep: Option<String>,
    /// Drop the records for which this condition holds; the others pass.
    #[serde(default)]
    pub drop: Option<String>,
    /// What becomes of a record the condition cannot be evaluated on (a field missing, a
    /// type that does not fit): `reject` it with the reason (to the dead letters), `drop`
    /// it, or `keep` it.
    #[serde(default)]
    pub on_error: OnError,
}

impl FilterConfig {
    /// The condition, whether it keeps (true) or drops, or why the config is wrong; the
    /// message starts with the field's pointer, so `weir validate` shows it at its line.
    fn condition(&self) -> Result<(Expr, bool), PluginError> {
        let (field, source, keeps) = match (&self.keep, &self.drop) {
            (Some(k), None) => ("keep", k, true),
            (None, Some(d)) => ("drop", d, false),
            _ => return Err(PluginError::config("give exactly one of `keep` (the records to keep) and `drop` (the records to drop)")),
        };
        let expr = Expr::condition(source)
            .map_err(|e| PluginError::config(format!("/{field}: {} (column {} of the condition)", e.message, e.column)))?;
        Ok((expr, keeps))
    }
}

/// The `filter` transform.
pub struct Filter {
    condition: Expr,
    keeps: bool,
    on_error: OnError,
}

impl Transform for Filter {
    type Config = FilterConfig;
    const NAME: &'static str = "filter";
    const DESCRIPTION: &'static str = "Keeps or drops records by a CEL condition over the record, its key and headers.";

    fn validate(config: &FilterConfig) -> Result<(), PluginError> {
        config.condition().map(|_| ())
    }

    fn create(config: FilterConfig, _ctx: Context) -> Result<Self, PluginError> {
        let (condition, keeps) = config.condition()?;
        Ok(Filter { condition, keeps, on_error: config.on_error })
    }

    /// The whole work is the condition: a host of ABI minor 7 evaluates it itself, exactly
    /// as `process` below does.
    fn condition(&self) -> Option<Condition> {
        Some(Condition { expression: self.condition.source().to_owned(), keeps: self.keeps, on_error: self.on_error })
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        for (i, r) in input.iter().enumerate() {
            let keep = match self.condition.test(&Record::new(r, self.condition.needs())) {
                Ok(holds) => holds == self.keeps,
                Err(e) => match self.on_error {
                    OnError::Reject => {
                        out.reject(i, &e);
                        continue;
                    }
                    OnError::Drop => false,
                    OnError::Keep => true,
                },
            };
            if keep {
                out.pass(i, &r);
            }
        }
        Ok(())
    }
}

weir_plugin::export_plugins!(transform Filter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_transform, MockHost};
    use weir_plugin::serde_json::json;

    #[test]
    fn keeps_drops_and_rejects_by_condition() {
        let mut keep: Filter = MockHost::new().transform(json!({"keep": "record.n > 1"})).unwrap();
        let out = run_transform(&mut keep, &json_batch([r#"{"n":1}"#, r#"{"n":2}"#, r#"{"m":3}"#, r#"{"n":3}"#])).unwrap();
        assert_eq!(out.batch.origins(), [1, 3]);
        let rejected: Vec<(usize, String)> = out.rejections.iter().map(|(i, r)| (i, r.to_owned())).collect();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, 2);
        assert!(rejected[0].1.contains("record.n > 1"), "{rejected:?}");
        let mut drop: Filter = MockHost::new().transform(json!({"drop": "record.n > 1", "on_error": "keep"})).unwrap();
        let out = run_transform(&mut drop, &json_batch([r#"{"n":1}"#, r#"{"n":2}"#, r#"{"m":3}"#])).unwrap();
        assert_eq!(out.batch.origins(), [0, 2]);
    }

    #[test]
    fn declares_its_condition_as_configured() {
        let drop: Filter = MockHost::new().transform(json!({"drop": "record.n > 1", "on_error": "keep"})).unwrap();
        assert_eq!(drop.condition(), Some(Condition { expression: "record.n > 1".into(), keeps: false, on_error: OnError::Keep }));
        let keep: Filter = MockHost::new().transform(json!({"keep": "record.n > 1"})).unwrap();
        let declared = keep.condition().unwrap();
        assert!(declared.keeps && declared.on_error == OnError::Reject, "{declared:?}");
    }

    #[test]
    fn bad_configs_say_what_and_where() {
        let e = MockHost::new().transform::<Filter>(json!({"keep": "record.n >"})).err().unwrap().to_string();
        assert!(e.starts_with("/keep: not a valid expression"), "{e}");
        let e = MockHost::new().transform::<Filter>(json!({"keep": "n > 1"})).err().unwrap().to_string();
        assert!(e.contains("unknown variable `n`"), "{e}");
        let e = MockHost::new().transform::<Filter>(json!({"keep": "true", "drop": "false"})).err().unwrap().to_string();
        assert!(e.contains("exactly one"), "{e}");
    }
}
