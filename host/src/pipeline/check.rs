//! Checking a pipeline against the plugins found, without creating anything (`weir validate`).

use super::*;

/// Checks a pipeline against the plugins found, without creating anything: every stage's
/// plugin exists and has the right kind, and its config passes the plugin's schema and
/// the plugin's own check. Returns every problem found.
pub fn check(file: &PipelineFile, registry: &Registry) -> Vec<HostError> {
    let mut errors = Vec::new();
    for (role, stage) in file.stages() {
        let (pointer, wanted) = (role.pointer(), role.kind());
        let plugin = match registry.get(&stage.plugin, wanted) {
            Ok(p) => p,
            Err(e) => {
                errors.push(file.error_at(&format!("{pointer}/plugin"), e.to_string()));
                continue;
            }
        };
        if stage.workers.is_some_and(|n| n.get() > 1) && plugin.descriptor.flags & weir_plugin::abi::PLUGIN_WORKERS == 0 {
            errors.push(file.error_at(
                &format!("{pointer}/workers"),
                format!(
                    "sink {} cannot run several instances side by side (it holds one file or address, keeps arrival order, or was \
                     built before ABI 1.5); remove `workers`",
                    plugin.name
                ),
            ));
        }
        // Before anything is reported: a value of a field the plugin marks secret never shows.
        file.redactor.hide_marked(&stage.config, &plugin.schema);
        let config_ptr = format!("{pointer}/config");
        match jsonschema::draft202012::new(&plugin.schema) {
            Err(e) => errors.push(file.error_at(&config_ptr, format!("plugin {:?} exports an invalid config schema: {e}", plugin.name))),
            Ok(validator) => {
                let mut found = false;
                for e in validator.iter_errors(&stage.config) {
                    found = true;
                    let mut at = format!("{config_ptr}{}", e.instance_path().as_str());
                    let message = match e.kind() {
                        jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                            if let Some(first) = unexpected.first() {
                                at = format!("{at}/{}", first.replace('~', "~0").replace('/', "~1"));
                            }
                            let allowed = allowed_fields(&plugin.schema, e.instance_path().as_str());
                            format!(
                                "unknown field{} {}; {} accepts: {allowed}",
                                if unexpected.len() > 1 { "s" } else { "" },
                                quote_list(unexpected),
                                plugin.name
                            )
                        }
                        _ => e.masked().to_string(),
                    };
                    errors.push(file.error_at(&at, message));
                }
                if !found {
                    if let Err(message) = plugin.validate(&stage.config.to_string()) {
                        // A message may begin with the pointer of the field it is about.
                        let (at, message) = match message.split_once(": ") {
                            Some((field, rest)) if field.starts_with('/') && stage.config.pointer(field).is_some() => {
                                (format!("{config_ptr}{field}"), rest.to_owned())
                            }
                            _ => (config_ptr.clone(), message),
                        };
                        errors.push(file.error_at(&at, message));
                    }
                }
            }
        }
    }
    errors
}

pub(super) fn quote_list(items: &[String]) -> String {
    items.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
}

/// The property names a schema allows at `pointer` (top level only is resolved).
pub(super) fn allowed_fields(schema: &serde_json::Value, pointer: &str) -> String {
    let props = if pointer.is_empty() { schema.get("properties") } else { None };
    match props.and_then(|p| p.as_object()) {
        Some(map) if !map.is_empty() => map.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
        _ => "see `weir plugins`".into(),
    }
}
