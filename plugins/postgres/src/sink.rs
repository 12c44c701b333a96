//! The `postgres` sink: each batch is written with binary `COPY` into a temporary staging
//! table and merged with `INSERT … SELECT … ON CONFLICT (unique key) DO NOTHING`, in one
//! transaction. A batch the database refuses for a record's own sake (a type error, a
//! constraint) is written again row by row, so only the bad records are rejected, each
//! with the database's message.

use std::time::Duration;

use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement, Transaction};
use weir_plugin::{BatchRef, Context, PluginError, Rejections, Sink};

use crate::config::{masked_url, PostgresConfig};
use crate::mapping::{row, Cell, Column};

/// What a failed statement means for the batch.
#[derive(Debug)]
enum Failure {
    /// The connection or the server failed for now: retry the batch later.
    Retry(String),
    /// A record's own data was refused: write row by row to find it.
    Data(String),
    /// The table or the statement is wrong: retrying cannot help.
    Fatal(String),
    /// The table is not there (SQLSTATE 42P01): dropped or renamed since the sink started.
    TableGone(String),
}

fn classify(e: &tokio_postgres::Error) -> Failure {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let message = format!("{} (SQLSTATE {code})", db.message());
        if code == SqlState::UNDEFINED_TABLE.code() {
            return Failure::TableGone(message);
        }
        return match &code[..2] {
            "22" | "23" => Failure::Data(message),
            "42" | "0A" => Failure::Fatal(message),
            _ => Failure::Retry(message),
        };
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        return Failure::Retry(format!("connection lost: {e}"));
    }
    // Left: a value this side could not encode for its column (for example out of range).
    Failure::Data(e.to_string())
}

/// Records of a batch still to be converted.
struct Records<'a, 'b> {
    columns: &'a [Column],
    batch: &'a BatchRef<'b>,
    range: std::ops::Range<usize>,
}

struct Conn {
    client: Client,
    types: Vec<Type>,
    insert_one: Statement,
    /// COPY straight into the table: the fast path while no key is already stored.
    direct_sql: String,
    /// COPY into the staging table, for the merge.
    copy_sql: String,
    merge_sql: String,
    /// Whether the direct path may be tried (the table has a unique key to protect it).
    direct: bool,
}

/// The `postgres` sink.
pub struct PostgresSink {
    config: PostgresConfig,
    columns: Vec<Column>,
    conn: Option<Conn>,
    /// Whether a connection has been set up once (and `create: true` applied): the table
    /// is created only then, never again while the sink runs.
    started: bool,
    ctx: Context,
    /// Deletes old rows, when `retention` is set.
    retention: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for PostgresSink {
    fn drop(&mut self) {
        if let Some(task) = self.retention.take() {
            task.abort();
        }
    }
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

/// The error for a table that disappeared while the sink was running.
fn table_gone(table: &str, detail: &str) -> PluginError {
    PluginError::fatal(format!(
        "table {table} does not exist any more: it was dropped or renamed while the sink was running ({detail}); \
         create: true creates the table only when the sink starts, so the records fail until the table is back \
         (rename it back, or restart the pipeline to create it again)"
    ))
}

impl PostgresSink {
    /// Opens a connection, with TLS as configured.
    async fn open(config: &PostgresConfig, ctx: &Context) -> Result<Client, PluginError> {
        let ca = config.tls_ca_file.as_ref().map(|ca| ctx.resolve(ca));
        weir_plugin::pg::connect(&config.url, config.tls, ca.as_deref(), *ctx).await.map_err(|e| match e {
            weir_plugin::pg::ConnectError::Config(m) => PluginError::config(m),
            weir_plugin::pg::ConnectError::Server(e) => {
                let url = masked_url(&config.url);
                match classify(&e) {
                    Failure::Fatal(m) | Failure::Data(m) | Failure::TableGone(m) => {
                        PluginError::config(format!("cannot connect to {url}: {m}"))
                    }
                    Failure::Retry(m) => PluginError::retry(format!("cannot connect to {url}: {m}")),
                }
            }
        })
    }

    /// Connects and prepares the statements; `at_start`: the first connection of this sink,
    /// the only one where `create: true` creates the table.
    async fn connect(config: &PostgresConfig, columns: &[Column], ctx: &Context, at_start: bool) -> Result<Conn, PluginError> {
        let url = masked_url(&config.url);
        let connecting = Self::open(config, ctx);
        let client = match tokio::time::timeout(Duration::from_secs(config.connect_timeout_secs), connecting).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(PluginError::retry(format!("cannot connect to {url}: no answer within {} s", config.connect_timeout_secs)))
            }
        };
        if config.create && at_start {
            // Under a lock: the instances of `workers: N` start together.
            let ddl = format!("BEGIN; SELECT pg_advisory_xact_lock(hashtext('weir-postgres-create')); {} COMMIT;", config.ddl().join("\n"));
            client.batch_execute(&ddl).await.map_err(|e| PluginError::config(format!("create: true failed: {}", detail(&e))))?;
        }
        let names: Vec<&str> = columns.iter().map(|c| c.spec.name.as_str()).collect();
        let cols = quoted(&names);
        let table = &config.table;
        let probe = client.prepare(&format!("SELECT {cols} FROM {table} LIMIT 0")).await.map_err(|e| match classify(&e) {
            Failure::TableGone(m) if !at_start => table_gone(table, &m),
            _ => PluginError::config(format!("cannot use table {table}: {}; create it, or set create: true", detail(&e))),
        })?;
        let types: Vec<Type> = probe.columns().iter().map(|c| c.type_().clone()).collect();
        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS weir_staging ON COMMIT DELETE ROWS AS SELECT {cols} FROM {table} WITH NO DATA"
            ))
            .await
            .map_err(|e| PluginError::retry(format!("cannot create the staging table: {}", detail(&e))))?;
        let conflict = if config.unique_key.is_empty() {
            String::new()
        } else {
            format!(" ON CONFLICT ({}) DO NOTHING", quoted(&config.unique_key.iter().map(String::as_str).collect::<Vec<_>>()))
        };
        let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert_one = client
            .prepare_typed(&format!("INSERT INTO {table} ({cols}) VALUES ({}){conflict}", params.join(", ")), &types)
            .await
            .map_err(|e| PluginError::config(format!("cannot prepare the insert into {table}: {}", detail(&e))))?;
        ctx.info(&format!("Connected to {url}; writing {table}."));
        Ok(Conn {
            client,
            types,
            insert_one,
            direct_sql: format!("COPY {table} ({cols}) FROM STDIN (FORMAT binary)"),
            copy_sql: format!("COPY weir_staging ({cols}) FROM STDIN (FORMAT binary)"),
            merge_sql: format!("INSERT INTO {table} ({cols}) SELECT {cols} FROM weir_staging{conflict}"),
            direct: !config.unique_key.is_empty(),
        })
    }

    /// Writes records `range` of the batch in one transaction. First, binary COPY straight
    /// into the table: the unique index refuses the whole COPY if any key is already stored
    /// (a redelivery), and only then are the rows copied into staging and merged with
    /// `ON CONFLICT DO NOTHING`. Either way no key is stored twice. Records are converted
    /// while the COPY streams, so the server works while this side converts; `rows` ends up
    /// holding every converted row (for the row-by-row fallback). Returns rows inserted.
    async fn bulk(
        conn: &mut Conn,
        records: Records<'_, '_>,
        rows: &mut Vec<(usize, Vec<Cell>)>,
        rejections: &mut Rejections,
    ) -> Result<u64, tokio_postgres::Error> {
        let first = if conn.direct { &conn.direct_sql } else { &conn.copy_sql };
        let tx = conn.client.transaction().await?;
        match Self::copy(&tx, first, &conn.types, Some(records), rows, rejections).await {
            Ok(n) if conn.direct => {
                tx.commit().await?;
                return Ok(n);
            }
            Ok(_) => {}
            Err(e) if conn.direct && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                tx.rollback().await?;
                let tx = conn.client.transaction().await?;
                Self::copy(&tx, &conn.copy_sql, &conn.types, None, rows, rejections).await?;
                let inserted = tx.execute(&conn.merge_sql, &[]).await?;
                tx.commit().await?;
                return Ok(inserted);
            }
            Err(e) => return Err(e),
        }
        let inserted = tx.execute(&conn.merge_sql, &[]).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// COPYs `records` (converting each, rejecting those that do not convert) or, when
    /// `None`, the rows already in `rows`.
    async fn copy(
        tx: &Transaction<'_>,
        sql: &str,
        types: &[Type],
        records: Option<Records<'_, '_>>,
        rows: &mut Vec<(usize, Vec<Cell>)>,
        rejections: &mut Rejections,
    ) -> Result<u64, tokio_postgres::Error> {
        let copy = tx.copy_in(sql).await?;
        let writer = BinaryCopyInWriter::new(copy, types);
        pin_mut!(writer);
        let mut failed = None;
        match records {
            Some(Records { columns, batch, range }) => {
                for i in range {
                    match row(columns, &batch.get(i)) {
                        Ok(cells) => {
                            if failed.is_none() {
                                let refs: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                                failed = writer.as_mut().write(&refs).await.err();
                            }
                            // After a failure, keep converting: the fallback needs every row.
                            rows.push((i, cells));
                        }
                        Err(reason) => rejections.reject(i, &reason),
                    }
                }
            }
            None => {
                for (_, cells) in rows.iter() {
                    let refs: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                    writer.as_mut().write(&refs).await?;
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => writer.finish().await,
        }
    }

    /// Writes rows one by one, each under a savepoint; rejects those the database refuses.
    async fn one_by_one(conn: &mut Conn, rows: &[(usize, Vec<Cell>)], rejections: &mut Rejections) -> Result<u64, Failure> {
        let mut tx = conn.client.transaction().await.map_err(|e| classify(&e))?;
        let mut inserted = 0;
        for (i, cells) in rows {
            let refs: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            let sp = tx.savepoint("weir_row").await.map_err(|e| classify(&e))?;
            match sp.execute(&conn.insert_one, &refs).await {
                Ok(n) => {
                    sp.commit().await.map_err(|e| classify(&e))?;
                    inserted += n;
                }
                Err(e) => match classify(&e) {
                    Failure::Data(m) => {
                        sp.rollback().await.map_err(|e| classify(&e))?;
                        rejections.reject(*i, &format!("PostgreSQL refused the row: {m}"));
                    }
                    other => return Err(other),
                },
            }
        }
        tx.commit().await.map_err(|e| classify(&e))?;
        Ok(inserted)
    }
}

fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl Sink for PostgresSink {
    type Config = PostgresConfig;
    const NAME: &'static str = "postgres";
    const DESCRIPTION: &'static str = "Writes records as rows: binary COPY into staging, merged with ON CONFLICT DO NOTHING (idempotent).";

    fn validate(config: &PostgresConfig) -> Result<(), PluginError> {
        config.check()
    }

    /// Instances write side by side: each batch is its own transaction, and the unique key
    /// keeps any record from being stored twice whichever instance writes it.
    const WORKERS: bool = true;

    fn create(config: PostgresConfig, ctx: Context) -> Result<Self, PluginError> {
        let columns = Column::mapped(&config.columns);
        let conn = match weir_plugin::runtime().block_on(Self::connect(&config, &columns, &ctx, true)) {
            Ok(c) => Some(c),
            Err(PluginError::Retry { message, .. }) => {
                ctx.warn(&format!("{message}; the sink keeps trying and the pipeline pushes back meanwhile."));
                None
            }
            Err(e) => return Err(e),
        };
        let started = conn.is_some();
        let retention = config.retention.clone().map(|r| {
            let (table, open_config) = (config.table.clone(), config.clone());
            weir_plugin::runtime().spawn(crate::retention::sweep(table, r, ctx, move || {
                let (config, ctx) = (open_config.clone(), ctx);
                async move { PostgresSink::open(&config, &ctx).await }
            }))
        });
        let sink = PostgresSink { config, columns, conn, started, ctx, retention };
        sink.report_health(if started { Ok(()) } else { Err("cannot connect; retrying") });
        Ok(sink)
    }

    fn write(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        let result = self.write_batch(batch, rejections);
        match &result {
            Ok(()) => self.report_health(Ok(())),
            Err(PluginError::Retry { message, .. }) => self.report_health(Err(message)),
            Err(_) => {}
        }
        result
    }
}

impl PostgresSink {
    /// Tells the host whether the database answers.
    fn report_health(&self, state: Result<(), &str>) {
        let target = masked_url(&self.config.url);
        self.ctx.report_health("postgres", &target, state.is_ok(), state.err().unwrap_or(""));
    }

    fn write_batch(&mut self, batch: &BatchRef<'_>, rejections: &mut Rejections) -> Result<(), PluginError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rt = weir_plugin::runtime();
        if self.conn.is_none() {
            self.conn = Some(rt.block_on(Self::connect(&self.config, &self.columns, &self.ctx, !self.started))?);
            self.started = true;
        }
        let conn = self.conn.as_mut().expect("connected above");
        let (mut inserted, mut stored) = (0, 0);
        let step = self.config.max_rows_per_write.get();
        let mut rows = Vec::with_capacity(step.min(batch.len()));
        for start in (0..batch.len()).step_by(step) {
            let records = Records { columns: &self.columns, batch, range: start..(start + step).min(batch.len()) };
            rows.clear();
            let bulk = rt.block_on(Self::bulk(conn, records, &mut rows, rejections));
            // Rejections so far are records that did not convert; those after are the database's.
            let converted = rejections.len();
            let result = match bulk {
                Ok(n) => Ok(n),
                Err(e) => match classify(&e) {
                    Failure::Data(m) => {
                        self.ctx.log(weir_plugin::Level::Debug, &format!("Batch refused ({m}); writing it row by row."));
                        rt.block_on(Self::one_by_one(conn, &rows, rejections))
                    }
                    other => Err(other),
                },
            };
            match result {
                Ok(n) => {
                    inserted += n;
                    stored += rows.len() - (rejections.len() - converted);
                }
                Err(Failure::Retry(m)) => {
                    self.conn = None;
                    return Err(PluginError::retry(format!("PostgreSQL: {m}")));
                }
                Err(Failure::TableGone(m)) => {
                    // Connect afresh next time: the statements name a table that is gone.
                    self.conn = None;
                    return Err(table_gone(&self.config.table, &m));
                }
                Err(Failure::Fatal(m) | Failure::Data(m)) => return Err(PluginError::fatal(format!("PostgreSQL: {m}"))),
            }
        }
        self.ctx.counter_add("postgres_rows_inserted", "Rows inserted.", inserted);
        self.ctx.counter_add(
            "postgres_rows_already_present",
            "Records skipped because their unique key was already stored.",
            stored as u64 - inserted,
        );
        Ok(())
    }
}
