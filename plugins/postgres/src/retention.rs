//! Retention: rows older than a duration are deleted on an interval, in bounded batches
//! (each `DELETE` removes at most `batch` rows, so no statement holds its locks for long and
//! ingest goes on beside it), on a connection of its own.

use std::num::NonZeroUsize;
use std::time::Duration;

use weir_plugin::{Context, Deserialize, JsonSchema, PluginError};

/// Config of a `postgres` sink's retention.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// The column rows are aged by: a `timestamp` (taken as UTC) or `timestamptz` column.
    pub column: String,
    /// Rows whose `column` is older than this are deleted: `30d`, `12h`, `90m`.
    pub keep: String,
    /// How often old rows are looked for.
    #[serde(default = "default_every")]
    pub every: String,
    /// Most rows one `DELETE` removes; a sweep repeats it until fewer are left.
    #[serde(default = "default_batch")]
    pub batch: NonZeroUsize,
}

fn default_every() -> String {
    "1m".into()
}
fn default_batch() -> NonZeroUsize {
    NonZeroUsize::new(10_000).expect("non-zero")
}

fn duration(field: &str, text: &str) -> Result<Duration, PluginError> {
    let d = humantime::parse_duration(text)
        .map_err(|e| PluginError::config(format!("retention.{field} {text:?} is not a duration such as 30d, 12h or 90m: {e}")))?;
    if d.is_zero() {
        return Err(PluginError::config(format!("retention.{field} must be more than zero")));
    }
    Ok(d)
}

impl Retention {
    /// Checks the durations; the column is checked against the table's columns by the caller.
    pub fn check(&self) -> Result<(Duration, Duration), PluginError> {
        Ok((duration("keep", &self.keep)?, duration("every", &self.every)?))
    }
}

/// Deletes old rows of `table` every `every` until aborted. `open` makes a connection.
pub async fn sweep<F, Fut>(table: String, retention: Retention, ctx: Context, open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<tokio_postgres::Client, PluginError>>,
{
    let Ok((keep, every)) = retention.check() else { return };
    let sql = format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE \"{column}\" < now() - make_interval(secs => $1) LIMIT {batch}))",
        column = retention.column,
        batch = retention.batch.get()
    );
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.is_none() {
            match open().await {
                Ok(c) => {
                    // Naive timestamps are compared as UTC.
                    if let Err(e) = c.batch_execute("SET TIME ZONE 'UTC'").await {
                        ctx.warn(&format!("retention: {e}; trying again next time"));
                        continue;
                    }
                    client = Some(c);
                }
                Err(e) => {
                    ctx.warn(&format!("retention: {e}; trying again next time"));
                    continue;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        let mut deleted = 0u64;
        loop {
            match c.execute(&sql, &[&keep.as_secs_f64()]).await {
                Ok(n) => {
                    deleted += n;
                    if n < retention.batch.get() as u64 {
                        break;
                    }
                }
                Err(e) => {
                    ctx.warn(&format!("retention: deleting rows older than {} from {table} failed: {e}", retention.keep));
                    client = None;
                    break;
                }
            }
        }
        if deleted > 0 {
            ctx.counter_add("postgres_rows_expired", "Rows deleted by retention.", deleted);
            ctx.log(weir_plugin::Level::Debug, &format!("Retention deleted {deleted} rows older than {} from {table}.", retention.keep));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_checked() {
        let r = |keep: &str, every: &str| Retention { column: "t".into(), keep: keep.into(), every: every.into(), batch: default_batch() };
        assert_eq!(r("30d", "1m").check().unwrap(), (Duration::from_secs(30 * 86400), Duration::from_secs(60)));
        assert!(r("a month", "1m").check().unwrap_err().to_string().contains("retention.keep \"a month\""));
        assert!(r("1d", "0s").check().unwrap_err().to_string().contains("retention.every must be more than zero"));
    }
}
