//! The `validate` transform: checks each record against a JSON Schema (2020-12) and
//! rejects those that fail, with the failing JSON pointer and message.

use std::path::PathBuf;

use weir_plugin::serde_json::{self, Value};
use weir_plugin::{BatchRef, Context, Deserialize, JsonSchema, Output, PluginError, Transform};

/// Config of the `validate` transform.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// The JSON Schema file; a relative path is taken from the pipeline file's directory.
    pub schema: PathBuf,
    /// How many violations one rejection reason lists at most.
    #[serde(default = "default_max_errors")]
    pub max_errors: usize,
}

fn default_max_errors() -> usize {
    3
}

/// The `validate` transform.
pub struct Validate {
    validator: jsonschema::Validator,
    max_errors: usize,
}

impl Validate {
    /// Builds the transform from a schema document.
    pub fn from_schema(schema: &Value, max_errors: usize) -> Result<Self, PluginError> {
        let validator = jsonschema::draft202012::new(schema).map_err(|e| PluginError::config(format!("the schema is not valid: {e}")))?;
        Ok(Validate { validator, max_errors: max_errors.max(1) })
    }

    /// The reason a value is invalid, or `None` when it is valid.
    fn violations(&self, value: &Value) -> Option<String> {
        let mut reasons = Vec::new();
        let mut more = 0;
        for e in self.validator.iter_errors(value) {
            if reasons.len() < self.max_errors {
                let path = e.instance_path().as_str().to_owned();
                let at = if path.is_empty() { "/".to_owned() } else { path };
                reasons.push(format!("{at}: {e}"));
            } else {
                more += 1;
            }
        }
        if reasons.is_empty() {
            return None;
        }
        let mut text = reasons.join("; ");
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        Some(text)
    }
}

impl Transform for Validate {
    type Config = ValidateConfig;
    const NAME: &'static str = "validate";
    const DESCRIPTION: &'static str = "Rejects records that do not match a JSON Schema (2020-12), naming the failing pointer.";

    fn create(config: ValidateConfig, ctx: Context) -> Result<Self, PluginError> {
        let path = ctx.resolve(&config.schema);
        let text =
            std::fs::read_to_string(&path).map_err(|e| PluginError::config(format!("cannot read schema {}: {e}", path.display())))?;
        let schema: Value =
            serde_json::from_str(&text).map_err(|e| PluginError::config(format!("schema {} is not JSON: {e}", path.display())))?;
        Self::from_schema(&schema, config.max_errors)
    }

    fn process(&mut self, input: &BatchRef<'_>, out: &mut Output) -> Result<(), PluginError> {
        for (i, record) in input.iter().enumerate() {
            match serde_json::from_slice::<Value>(record.value) {
                Err(e) => out.reject(i, &format!("not valid JSON: {e}")),
                Ok(value) => match self.violations(&value) {
                    Some(reason) => out.reject(i, &reason),
                    None => out.pass(i, &record),
                },
            }
        }
        Ok(())
    }
}

weir_plugin::export_plugins!(transform Validate);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::mock::{json_batch, run_transform, MockHost};

    fn schema_file(dir: &std::path::Path) {
        let schema = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["eventType","userId"],
            "properties":{"eventType":{"type":"string","minLength":1},"userId":{"type":"string"}}}"#;
        std::fs::write(dir.join("event.json"), schema).unwrap();
    }

    #[test]
    fn rejects_with_pointer_and_passes_valid_records() {
        let dir = std::env::temp_dir().join(format!("weir-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        schema_file(&dir);
        let host = MockHost::with_base_dir(dir.to_str().unwrap());
        let mut t: Validate = host.transform(serde_json::json!({"schema": "event.json"})).unwrap();
        let input = json_batch([r#"{"eventType":"a","userId":"u"}"#, r#"{"eventType":"a","userId":7}"#, r#"{"eventType":""#]);
        let out = run_transform(&mut t, &input).unwrap();
        assert_eq!(out.batch.len(), 1);
        assert_eq!(out.batch.origins(), &[0]);
        let rejected: Vec<_> = out.rejections.iter().collect();
        assert_eq!(rejected.len(), 2);
        assert_eq!(rejected[0].0, 1);
        assert!(rejected[0].1.starts_with("/userId: "), "{}", rejected[0].1);
        assert!(rejected[1].1.starts_with("not valid JSON"), "{}", rejected[1].1);
    }

    #[test]
    fn missing_schema_file_is_a_config_error() {
        let host = MockHost::new();
        let err = host.transform::<Validate>(serde_json::json!({"schema": "/nonexistent/x.json"})).err().unwrap();
        assert!(matches!(err, PluginError::Config(m) if m.contains("cannot read schema")));
    }
}
