//! The `__NAME__` transform: sets one member, `field`, to `value` in every record that is a
//! JSON object, and rejects every other record with a reason (the host sends rejected
//! records to the pipeline's dead letters). Replace `process` with your own work.

use weir_plugin::serde_json::{Map, Value};
use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, Output, PluginError, Transform};

/// Config of the `__NAME__` transform.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct __TYPE__Config {
    /// The member to set in each record.
    pub field: String,
    /// The value it is set to (any JSON value).
    pub value: Value,
}

/// The `__NAME__` transform.
pub struct __TYPE__ {
    config: __TYPE__Config,
    _ctx: Context,
}

impl Transform for __TYPE__ {
    type Config = __TYPE__Config;
    const NAME: &'static str = "__NAME__";
    const DESCRIPTION: &'static str =
        "Sets a member of each JSON object record; rejects other records.";

    fn validate(config: &__TYPE__Config) -> Result<(), PluginError> {
        // A message that starts with a JSON pointer is shown at that field's line.
        match config.field.is_empty() {
            true => Err(PluginError::config("/field: must not be empty")),
            false => Ok(()),
        }
    }

    fn create(config: __TYPE__Config, ctx: Context) -> Result<Self, PluginError> {
        Ok(__TYPE__ { config, _ctx: ctx })
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        for (i, record) in input.iter().enumerate() {
            match weir_plugin::serde_json::from_slice::<Map<String, Value>>(record.value) {
                Ok(mut object) => {
                    object.insert(self.config.field.clone(), self.config.value.clone());
                    let value = weir_plugin::serde_json::to_vec(&object)
                        .map_err(|e| PluginError::fatal(e.to_string()))?;
                    // The new record keeps the input's key, headers and time.
                    out.push(i, (&record).into(), &value);
                }
                Err(_) => out.reject(i, "not a JSON object"),
            }
        }
        Ok(())
    }
}

weir_plugin::export_plugins!(transform __TYPE__);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_transform, MockHost};
    use weir_plugin::serde_json::json;

    #[test]
    fn sets_the_field_and_rejects_what_is_not_an_object() {
        let host = MockHost::new();
        let mut t: __TYPE__ = host
            .transform(json!({"field": "team", "value": "core"}))
            .unwrap();
        let out = run_transform(
            &mut t,
            &json_batch([r#"{"id":1}"#, "[1,2]", r#"{"id":3,"team":"old"}"#]),
        )
        .unwrap();
        let values: Vec<&[u8]> = out.batch.as_ref().iter().map(|r| r.value).collect();
        assert_eq!(
            values,
            [
                &br#"{"id":1,"team":"core"}"#[..],
                &br#"{"id":3,"team":"core"}"#[..]
            ]
        );
        assert_eq!(
            out.batch.origins(),
            [0, 2],
            "each output record names the input it came from"
        );
        assert_eq!(
            out.rejections.iter().collect::<Vec<_>>(),
            [(1, "not a JSON object")]
        );
    }

    #[test]
    fn configs_are_checked_as_the_host_checks_them() {
        let host = MockHost::new();
        let empty = host
            .transform::<__TYPE__>(json!({"field": "", "value": 1}))
            .err()
            .unwrap();
        assert!(
            empty.to_string().contains("/field: must not be empty"),
            "{empty}"
        );
        let missing = host
            .transform::<__TYPE__>(json!({"field": "x"}))
            .err()
            .unwrap();
        assert!(
            missing.to_string().contains("missing field `value`"),
            "{missing}"
        );
    }
}
