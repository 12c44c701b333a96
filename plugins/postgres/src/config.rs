//! Config of the `postgres` sink, and the DDL it implies.

use std::num::NonZeroUsize;

use weir_plugin::serde_json::Value;
use weir_plugin::{Deserialize, JsonSchema, PluginError};

/// One column of the table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// SQL type as written in `CREATE TABLE`, constraints included: `VARCHAR(100) NOT NULL`,
    /// `JSONB`, `TIMESTAMP DEFAULT CURRENT_TIMESTAMP`, `SERIAL PRIMARY KEY`. Values are
    /// converted by its first word: text types, integers, booleans, floats, `numeric` /
    /// `decimal` (exact: the digits as written), `timestamp` / `timestamptz` (from ISO-8601
    /// text or epoch seconds / milliseconds), `json` (the text as written) / `jsonb`.
    #[serde(rename = "type")]
    pub sql_type: String,
    /// JSON pointer of the value in the record (`""` for the whole record). A column with
    /// no `from`, `fallback` or `default` is filled by the database.
    #[serde(default)]
    pub from: Option<String>,
    /// When `from` is missing: a template with `{{header:NAME}}` and `{{key}}` placeholders,
    /// e.g. `"{{header:kafka.topic}}/{{header:kafka.partition}}/{{header:kafka.offset}}"`.
    #[serde(default)]
    pub fallback: Option<String>,
    /// When both are missing: this value.
    #[serde(default)]
    pub default: Option<Value>,
}

impl ColumnSpec {
    /// Whether the sink fills this column (otherwise the database does).
    pub fn mapped(&self) -> bool {
        self.from.is_some() || self.fallback.is_some() || self.default.is_some()
    }

    /// Whether the column refuses NULL.
    pub fn not_null(&self) -> bool {
        let t = self.sql_type.to_ascii_uppercase();
        t.contains("NOT NULL") || t.contains("PRIMARY KEY")
    }
}

pub use weir_plugin::pg::{masked_url, TlsMode};

/// Config of the `postgres` sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string, `postgres://user:password@host:port/database` (usually
    /// `${DATABASE_URL}`); the password never appears in logs or errors.
    pub url: String,
    /// TLS for the connection.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of the certificate authority that signed the server's certificate (for
    /// `verify_ca` / `verify_full`); a relative path is taken from the pipeline file's directory.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// The table, `schema.table` or `table`.
    pub table: String,
    /// The table's columns, in order.
    pub columns: Vec<ColumnSpec>,
    /// Columns whose values identify a record: a record whose key is already in the table
    /// is skipped, so redelivery never duplicates a row. Empty: every record is inserted.
    #[serde(default)]
    pub unique_key: Vec<String>,
    /// Create the schema, the table, the unique key and `indexes` when missing, once, when
    /// the sink starts; a table dropped or renamed later is not re-created (its records fail
    /// with the reason).
    #[serde(default)]
    pub create: bool,
    /// Further indexes created with `create`, each a list of columns.
    #[serde(default)]
    pub indexes: Vec<Vec<String>>,
    /// Most rows written in one transaction; larger batches are split.
    #[serde(default = "default_rows")]
    pub max_rows_per_write: NonZeroUsize,
    /// How long to wait for a connection, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Delete rows older than a duration, by a time column, on an interval and in bounded
    /// batches, while ingest goes on.
    #[serde(default)]
    pub retention: Option<crate::retention::Retention>,
}

fn default_rows() -> NonZeroUsize {
    NonZeroUsize::new(10_000).expect("non-zero")
}
fn default_connect_timeout() -> u64 {
    10
}

fn ident(name: &str) -> Result<(), PluginError> {
    let ok =
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PluginError::config(format!("{name:?} is not a plain SQL identifier (letters, digits, `_`)")))
    }
}

impl PostgresConfig {
    /// `(schema, table)`.
    pub fn schema_table(&self) -> (Option<&str>, &str) {
        match self.table.split_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, self.table.as_str()),
        }
    }

    /// Checks what the schema cannot.
    pub fn check(&self) -> Result<(), PluginError> {
        if let Some(r) = &self.retention {
            r.check()?;
            if !self.columns.iter().any(|c| c.name == r.column) {
                return Err(PluginError::config(format!("retention.column {:?} is not one of the table's columns", r.column)));
            }
        }
        let (schema, table) = self.schema_table();
        if let Some(s) = schema {
            ident(s)?;
        }
        ident(table)?;
        if self.columns.iter().all(|c| !c.mapped()) {
            return Err(PluginError::config("no column takes a value from the record; give columns a `from`"));
        }
        for c in &self.columns {
            ident(&c.name)?;
            if let Some(p) = &c.from {
                if !p.is_empty() && !p.starts_with('/') {
                    return Err(PluginError::config(format!("column {}: from {p:?} must be a JSON pointer such as \"/{p}\"", c.name)));
                }
            }
            if c.sql_type.contains(';') {
                return Err(PluginError::config(format!("column {}: the type may not contain `;`", c.name)));
            }
        }
        for k in self.unique_key.iter().chain(self.indexes.iter().flatten()) {
            if !self.columns.iter().any(|c| &c.name == k) {
                return Err(PluginError::config(format!("{k:?} is in unique_key or indexes but is not a column")));
            }
        }
        if !self.url.starts_with("postgres://") && !self.url.starts_with("postgresql://") && !self.url.contains('=') {
            return Err(PluginError::config("url must be a postgres:// URL or a key=value connection string"));
        }
        Ok(())
    }

    /// The statements `create: true` runs.
    pub fn ddl(&self) -> Vec<String> {
        let (schema, table) = self.schema_table();
        let mut out = Vec::new();
        if let Some(s) = schema {
            out.push(format!("CREATE SCHEMA IF NOT EXISTS {s};"));
        }
        let cols: Vec<String> = self.columns.iter().map(|c| format!("    {} {}", c.name, c.sql_type)).collect();
        out.push(format!("CREATE TABLE IF NOT EXISTS {} (\n{}\n);", self.table, cols.join(",\n")));
        if !self.unique_key.is_empty() {
            out.push(format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS {table}_{}_key ON {} ({});",
                self.unique_key.join("_"),
                self.table,
                self.unique_key.join(", ")
            ));
        }
        for idx in &self.indexes {
            out.push(format!("CREATE INDEX IF NOT EXISTS {table}_{}_idx ON {} ({});", idx.join("_"), self.table, idx.join(", ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin::serde_json::{self, json};

    /// The Nexus seed's table, as its README writes it.
    const NEXUS_DDL: &str = "CREATE TABLE analytics.events (
    id SERIAL PRIMARY KEY,
    event_type VARCHAR(100) NOT NULL,
    user_id VARCHAR(100) NOT NULL,
    service VARCHAR(50) NOT NULL,
    timestamp TIMESTAMP NOT NULL,
    data JSONB,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);";

    pub fn nexus() -> PostgresConfig {
        serde_json::from_value(json!({
            "url": "postgres://nexuscore:nexuscore123@localhost:5432/nexuscore",
            "table": "analytics.events",
            "create": true,
            "unique_key": ["event_id"],
            "columns": [
                {"name": "id", "type": "SERIAL PRIMARY KEY"},
                {"name": "event_type", "type": "VARCHAR(100) NOT NULL", "from": "/event_type"},
                {"name": "user_id", "type": "VARCHAR(100) NOT NULL", "from": "/user_id"},
                {"name": "service", "type": "VARCHAR(50) NOT NULL", "from": "/service"},
                {"name": "timestamp", "type": "TIMESTAMP NOT NULL", "from": "/timestamp"},
                {"name": "data", "type": "JSONB", "from": "/data"},
                {"name": "created_at", "type": "TIMESTAMP DEFAULT CURRENT_TIMESTAMP"},
                {"name": "event_id", "type": "VARCHAR(200) NOT NULL", "from": "/event_id", "fallback": "{{header:kafka.topic}}/{{header:kafka.partition}}/{{header:kafka.offset}}"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn nexus_ddl_comes_out_as_the_seed_writes_it_plus_the_unique_key() {
        let c = nexus();
        c.check().unwrap();
        let ddl = c.ddl();
        assert_eq!(ddl[0], "CREATE SCHEMA IF NOT EXISTS analytics;");
        let seed_columns = NEXUS_DDL.trim_end_matches("\n);");
        let ours = ddl[1].replace("CREATE TABLE IF NOT EXISTS", "CREATE TABLE");
        assert!(ours.starts_with(seed_columns), "{ours}");
        assert!(ours.ends_with(",\n    event_id VARCHAR(200) NOT NULL\n);"), "{ours}");
        assert_eq!(ddl[2], "CREATE UNIQUE INDEX IF NOT EXISTS events_event_id_key ON analytics.events (event_id);");
    }

    #[test]
    fn bad_names_and_keys_are_refused() {
        let mut c = nexus();
        c.table = "analytics.events; drop".into();
        assert!(c.check().is_err());
        let mut c = nexus();
        c.unique_key = vec!["nope".into()];
        assert!(c.check().unwrap_err().to_string().contains("not a column"));
    }
}
