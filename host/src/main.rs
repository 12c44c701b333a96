//! `weir`: run, validate and inspect event pipelines declared in YAML.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weir::config::{pipeline_files, HostConfig, PipelineFile, PipelineSpec};
use weir::host::Host;
use weir::loader::Registry;
use weir::pipeline::{self, State};

/// Weir runs event pipelines declared in YAML: a source, transforms and sinks, each a
/// plugin loaded from a dynamic library.
#[derive(Parser)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    /// Host config file (default: ./weir.yaml when present).
    #[arg(long, global = true, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Directory to search for plugin libraries (repeatable; default: the directory of
    /// the weir executable).
    #[arg(long = "plugins", global = true)]
    plugins: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// How `weir validate` reports.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run every pipeline in the pipelines directory until SIGINT or SIGTERM.
    Run {
        /// Directory of pipeline files (default: ./pipelines).
        #[arg(long)]
        pipelines: Option<PathBuf>,
        /// Address of the admin API (default: 127.0.0.1:8083).
        #[arg(long)]
        admin: Option<String>,
        /// Log filter, RUST_LOG syntax (default: info).
        #[arg(long)]
        log: Option<String>,
        /// Do not reload when pipeline files change (SIGHUP and POST /reload still do).
        #[arg(long)]
        no_watch: bool,
        /// Exit once every pipeline has finished (sources that end, such as `file`);
        /// exit status 1 when a pipeline failed.
        #[arg(long)]
        once: bool,
    },
    /// Check pipeline files against the plugins' schemas, with no I/O; exit 1 on any error.
    Validate {
        /// Pipeline files or directories (default: the pipelines directory).
        paths: Vec<PathBuf>,
        /// `text` (one line per problem, on stderr) or `json` (one document on stdout, for
        /// editors and CI bots).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List the plugin libraries found, and the files that are not usable plugins.
    Plugins {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send pipeline files to a running host (`PUT /pipelines/NAME`): each is checked there,
    /// written into its pipeline directory and applied make-before-break.
    Apply {
        /// Pipeline files; each pipeline is named by its `name`, else its file name.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Address of the host's admin API (default: `admin` of weir.yaml, 127.0.0.1:8083).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Remove a pipeline from a running host (`DELETE /pipelines/NAME`): it drains and stops,
    /// and its file is removed.
    Delete {
        /// The pipeline.
        name: String,
        /// Address of the host's admin API (default: `admin` of weir.yaml, 127.0.0.1:8083).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Print the records passing a stage of a running host's pipeline as they flow, one JSON
    /// line each (`{"time","stage","key","value"}`, secrets masked), until the limit or Ctrl-C.
    Tap {
        /// `PIPELINE` (its source) or `PIPELINE.STAGE`.
        target: String,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// Address of the host's admin API (default: `admin` of weir.yaml, 127.0.0.1:8083).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Feed dead letters back into a running host's pipeline: the envelopes a `dead_letter`
    /// sink wrote (a file of JSON lines, or `kafka://BROKERS/TOPIC`), optionally only those of
    /// one stage, reason or time; each record goes in as it came, with `weir.replay` headers.
    /// Exit 1 when a record is refused again.
    Replay {
        /// A file of dead letters, or `kafka://host:port[,host:port]/TOPIC`.
        from: String,
        /// The pipeline to feed (its source's place: the records go through its transforms).
        #[arg(long)]
        pipeline: String,
        /// Only dead letters of this stage.
        #[arg(long)]
        stage: Option<String>,
        /// Only dead letters whose reason contains this text.
        #[arg(long)]
        reason: Option<String>,
        /// Only dead letters written at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only dead letters written before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Records per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Print what would be replayed, send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Address of the host's admin API (default: `admin` of weir.yaml, 127.0.0.1:8083).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Show the pipelines of a running host, with their state and what each stage did.
    Status {
        /// Address of the host's admin API (default: `admin` of weir.yaml, 127.0.0.1:8083).
        #[arg(long)]
        admin: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run pipeline tests (`*.test.yaml` beside the pipelines): records given to each
    /// pipeline's source stage, expectations on its sinks and dead letters, with the real
    /// transforms and stand-in sources and sinks; exit 1 when one fails.
    Test {
        /// Test files or directories holding them (default: the pipelines directory).
        paths: Vec<PathBuf>,
        /// Also write the results as JUnit XML to this file.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Write a new plugin crate, ready to build, test and load (`weir new plugin NAME --kind
    /// sink`).
    New {
        #[command(subcommand)]
        what: New,
    },
    /// Write the JSON Schemas of the pipeline file, the host config and each plugin's config.
    Schema {
        /// Output directory.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
        /// Do not write; exit 1 when a committed schema differs from the generated one.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Subcommand)]
enum New {
    /// A plugin crate: config struct, trait implementation, mock-host tests, a sample pipeline
    /// and a README with the commands to build, test and load it.
    Plugin {
        /// The plugin's name in pipeline files (`plugin: NAME`), also the crate's name.
        name: String,
        /// What it is.
        #[arg(long, value_enum)]
        kind: weir::scaffold::Kind,
        /// The crate's directory (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The SDK: a directory holding its Cargo.toml, or a version requirement (default:
        /// the SDK this weir was built from, when its checkout is still there).
        #[arg(long)]
        sdk: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut overrides = serde_json::Map::new();
    if !cli.plugins.is_empty() {
        overrides.insert("plugins".into(), serde_json::json!(cli.plugins));
    }
    if let Command::Apply { admin: Some(a), .. }
    | Command::Delete { admin: Some(a), .. }
    | Command::Status { admin: Some(a), .. }
    | Command::Tap { admin: Some(a), .. }
    | Command::Replay { admin: Some(a), .. } = &cli.command
    {
        overrides.insert("admin".into(), a.clone().into());
    }
    if let Command::Run { pipelines, admin, log, no_watch, .. } = &cli.command {
        if *no_watch {
            overrides.insert("watch".into(), false.into());
        }
        for (key, value) in
            [("pipelines", pipelines.as_ref().map(|p| p.to_string_lossy().into_owned())), ("admin", admin.clone()), ("log", log.clone())]
        {
            if let Some(v) = value {
                overrides.insert(key.into(), v.into());
            }
        }
    }
    let config = match HostConfig::load(cli.config.as_deref(), &serde_json::Value::Object(overrides)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run { once, .. } => run(config, once),
        Command::Validate { paths, format } => validate(&config, paths, format),
        Command::Plugins { json } => plugins(&config, json),
        Command::Schema { out, check } => schema(&config, &out, check),
        Command::New { what: New::Plugin { name, kind, dir, sdk } } => new_plugin(name, kind, dir, sdk),
        Command::Apply { files, .. } => apply(&config, &files),
        Command::Test { paths, junit } => test(&config, paths, junit.as_deref()),
        Command::Delete { name, .. } => delete(&config, &name),
        Command::Status { json, .. } => status(&config, json),
        Command::Tap { target, limit, .. } => tap(&config, &target, limit),
        Command::Replay { from, pipeline, stage, reason, since, until, batch, dry_run, .. } => {
            replay(&config, &from, &pipeline, Picked { stage, reason, since, until }, batch, dry_run)
        }
    };
    weir::loader::remove_private_copies();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

fn run(config: HostConfig, once: bool) -> anyhow::Result<ExitCode> {
    init_logs(&config.log);
    let access = weir::admin::Access::from_config(&config)?;
    access.check_exposure(&config.admin)?;
    // Loaded before any pipeline starts: a wrong certificate file stops the start.
    let tls = match &config.admin_tls {
        Some(t) => Some(Arc::new(weir_plugin::tls::Tls::new(t.clone()).map_err(|e| anyhow::anyhow!("admin_tls: {e}"))?)),
        None => None,
    };
    for stale in weir::loader::remove_stale_copies() {
        tracing::info!(path = %stale.display(), "Removed the private plugin copies of a process that is gone.");
    }
    let registry = Registry::for_config(&config);
    tracing::info!(libraries = registry.libraries.len(), plugins = registry.plugins.len(), "Plugins loaded.");
    let host = Arc::new(Host::new(registry, config.plugin_dirs()));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("weir-admin").enable_all().build()?;
    if config.traces.enabled {
        let _in_runtime = runtime.enter();
        match weir::telemetry::init(&config.traces) {
            Ok(target) => tracing::info!(export_to = %target, "Traces on."),
            Err(e) => anyhow::bail!("{e}"),
        }
    }
    let running = host.start_dir(&config.pipelines)?;
    if running == 0 && once {
        tracing::error!("No pipeline could start, and --once has nothing to wait for; exiting.");
        return Ok(ExitCode::FAILURE);
    }
    if running == 0 && !host.pipelines().is_empty() {
        tracing::error!("No pipeline could start; exiting.");
        return Ok(ExitCode::FAILURE);
    }
    let _watcher =
        match config.watch.then(|| weir::watch::watch(host.clone(), &config.pipelines, Duration::from_secs(config.drain_timeout_secs))) {
            None => None,
            Some(Ok(w)) => Some(w),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Cannot watch the pipeline directory; reload with SIGHUP or POST /reload.");
                None
            }
        };
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.admin)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the admin API to {}: {e}", config.admin))?;
        tracing::info!(
            address = %config.admin,
            token = access.has_token(),
            tls = tls.is_some(),
            mutual_tls = config.admin_tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "Admin API listening."
        );
        let drain = Duration::from_secs(config.drain_timeout_secs);
        let app = weir::admin::router(host.clone(), drain, access);
        let on_hup = host.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading.");
                let h = on_hup.clone();
                let _ = tokio::task::spawn_blocking(move || h.reload(drain)).await;
            }
        });
        let served = match tls {
            Some(tls) => {
                let listener = weir::tls::TlsListener::new(listener, tls)?;
                tokio::spawn(async move { axum::serve(listener, app).await })
            }
            None => tokio::spawn(async move { axum::serve(listener, app).await }),
        };
        tokio::spawn(async move {
            if let Ok(Err(e)) = served.await {
                tracing::error!(error = %e, "Admin API stopped.");
            }
        });
        if once {
            let h = host.clone();
            let all_done = async move {
                while h.pipelines().iter().any(|p| matches!(p.state().0, State::Running | State::Stopping)) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = all_done => tracing::info!("Every pipeline finished."),
            }
        } else {
            shutdown_signal().await;
        }
        anyhow::Ok(())
    })?;
    tracing::info!("Shutting down; draining pipelines.");
    let drain = Duration::from_secs(config.drain_timeout_secs);
    let h = host.clone();
    runtime.block_on(async move { tokio::task::spawn_blocking(move || h.shutdown(drain)).await })?;
    if let Some(t) = weir::telemetry::tracer() {
        runtime.block_on(t.flush(Duration::from_secs(5)));
    }
    tracing::info!("Stopped.");
    let failed = host.pipelines().iter().any(|p| p.state().0 == State::Failed);
    Ok(if once && failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn expand(paths: Vec<PathBuf>, default: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let paths = if paths.is_empty() { vec![default.to_path_buf()] } else { paths };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(pipeline_files(&p)?);
        } else {
            files.push(p);
        }
    }
    Ok(files)
}

/// A problem `weir validate --format json` reports: where, and what.
fn problem_json(e: &weir::error::HostError, path: &Path) -> serde_json::Value {
    match e {
        weir::error::HostError::File(l) => serde_json::json!({
            "file": l.file,
            "line": l.line,
            "column": l.line.map(|_| l.column.unwrap_or(1)),
            "field": l.field.as_deref().filter(|p| !p.is_empty()).map(weir::error::dotted),
            "pointer": l.field.as_deref().filter(|p| !p.is_empty()),
            "message": l.message,
        }),
        other => {
            serde_json::json!({ "file": path, "line": null, "column": null, "field": null, "pointer": null, "message": other.to_string() })
        }
    }
}

fn validate(config: &HostConfig, paths: Vec<PathBuf>, format: Format) -> anyhow::Result<ExitCode> {
    let registry = Registry::for_config(config);
    let json = format == Format::Json;
    let warnings: Vec<String> = registry.broken.iter().map(|b| format!("{}: not usable: {}", b.path.display(), b.reason)).collect();
    if !json {
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    let mut failed = false;
    let mut reports = Vec::new();
    for path in expand(paths, &config.pipelines)? {
        let (name, errors) = match PipelineFile::load(&path) {
            Ok(file) => {
                let errors = pipeline::check(&file, &registry);
                if errors.is_empty() && !json {
                    println!("ok: {} (pipeline {}, {} stages)", path.display(), file.name, file.stages().len());
                }
                (Some(file.name.clone()), errors)
            }
            Err(e) => (None, vec![e]),
        };
        if json {
            let problems: Vec<_> = errors.iter().map(|e| problem_json(e, &path)).collect();
            reports.push(serde_json::json!({ "file": path, "pipeline": name, "valid": errors.is_empty(), "errors": problems }));
        } else {
            for e in &errors {
                eprintln!("error: {e}");
            }
        }
        failed |= !errors.is_empty();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "valid": !failed, "files": reports, "warnings": warnings }))?);
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The name a pipeline file gives its pipeline: its `name`, else the file name.
fn pipeline_name(path: &Path, text: &str) -> String {
    let named =
        serde_yaml::from_str::<serde_yaml::Value>(text).ok().and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned));
    named.unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
}

fn apply(config: &HostConfig, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let admin = weir::client::Admin::new(config)?;
    let mut failed = false;
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let name = pipeline_name(path, &text);
        let answer = admin.call("PUT", &format!("/pipelines/{name}"), Some(("application/yaml", text.as_bytes())), &[])?;
        let body = answer.json();
        if answer.status == 200 || answer.status == 201 {
            println!(
                "{}: pipeline {name} {} ({})",
                path.display(),
                body["result"].as_str().unwrap_or("applied"),
                body["etag"].as_str().unwrap_or("")
            );
            continue;
        }
        failed = true;
        match body["errors"].as_array() {
            // The API's positions are into the body, which is this file.
            Some(errors) => {
                for e in errors {
                    let at = match (e["line"].as_u64(), e["column"].as_u64()) {
                        (Some(l), Some(c)) => format!(":{l}:{c}"),
                        _ => String::new(),
                    };
                    let field = e["field"].as_str().map_or(String::new(), |f| format!("{f}: "));
                    eprintln!("error: {}{at}: {field}{}", path.display(), e["message"].as_str().unwrap_or(""));
                }
            }
            None => eprintln!("error: {}: {}", path.display(), answer.error()),
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn delete(config: &HostConfig, name: &str) -> anyhow::Result<ExitCode> {
    let answer = weir::client::Admin::new(config)?.call("DELETE", &format!("/pipelines/{name}"), None, &[])?;
    if answer.status == 200 {
        println!("pipeline {name} deleted ({} removed)", answer.json()["file"].as_str().unwrap_or("its file"));
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("error: {}", answer.error());
    Ok(ExitCode::FAILURE)
}

/// `weir replay`'s filters, as given.
struct Picked {
    stage: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn replay(config: &HostConfig, from: &str, pipeline: &str, picked: Picked, batch: usize, dry_run: bool) -> anyhow::Result<ExitCode> {
    use weir::replay::{offered, Pick};
    let time = |flag: &str, t: Option<String>| {
        t.map(|t| {
            humantime::parse_rfc3339_weak(&t)
                .map_err(|e| anyhow::anyhow!("--{flag} {t:?} is not an RFC 3339 time such as 2026-12-07T10:00:00Z: {e}"))
        })
        .transpose()
    };
    let pick =
        Pick { stage: picked.stage, reason: picked.reason, since: time("since", picked.since)?, until: time("until", picked.until)? };
    let letters = match from.strip_prefix("kafka://") {
        Some(rest) => {
            let (brokers, topic) =
                rest.rsplit_once('/').ok_or_else(|| anyhow::anyhow!("{from:?}: write kafka://host:port[,host:port]/TOPIC"))?;
            let registry = Registry::for_config(config);
            weir::replay::read_topic(&registry, brokers, topic, std::time::Duration::from_secs(3)).map_err(anyhow::Error::msg)?
        }
        None => weir::replay::read_file(Path::new(from)).map_err(anyhow::Error::msg)?,
    };
    let chosen: Vec<_> = letters.iter().filter(|l| pick.takes(l)).collect();
    eprintln!("{} of {} dead letters chosen from {from}", chosen.len(), letters.len());
    if dry_run {
        for l in &chosen {
            println!("{}", serde_json::to_string(&offered(l))?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let admin = weir::client::Admin::new(config)?;
    let (mut accepted, mut dropped, mut refused) = (0usize, 0usize, Vec::new());
    let per_request = batch.clamp(1, weir::replay::MAX_RECORDS);
    for (n, chunk) in chosen.chunks(per_request).enumerate() {
        let records: Vec<_> = chunk.iter().map(|l| offered(l)).collect();
        // Serialized as it is, not through a `Value`, so each value keeps its bytes.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            records: Vec<weir::replay::ToOffer<'a>>,
        }
        let body = serde_json::to_vec(&Body { records })?;
        let answer = admin.call("POST", &format!("/pipelines/{pipeline}/records"), Some(("application/json", &body)), &[])?;
        if answer.status != 200 {
            eprintln!("error: {} ({accepted} replayed before)", answer.error());
            return Ok(ExitCode::FAILURE);
        }
        let a = answer.json();
        accepted += a["accepted"].as_u64().unwrap_or(0) as usize;
        dropped += a["dropped"].as_u64().unwrap_or(0) as usize;
        for kind in ["rejected", "failed"] {
            for r in a[kind].as_array().into_iter().flatten() {
                let i = n * per_request + r["index"].as_u64().unwrap_or(0) as usize;
                refused.push(format!("dead letter {} ({kind}): {}", i + 1, r["reason"].as_str().unwrap_or("")));
            }
        }
    }
    println!("replayed {} into {pipeline}: {accepted} accepted, {dropped} dropped, {} refused", chosen.len(), refused.len());
    for r in &refused {
        eprintln!("  {r}");
    }
    Ok(if refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn tap(config: &HostConfig, target: &str, limit: Option<usize>) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let admin = weir::client::Admin::new(config)?;
    let list = admin.call("GET", "/pipelines", None, &[])?;
    if list.status != 200 {
        eprintln!("error: {}", list.error());
        return Ok(ExitCode::FAILURE);
    }
    let names: Vec<String> = list.json().as_array().into_iter().flatten().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect();
    // Names may hold dots: a whole pipeline name wins, else the longest name before a dot.
    let (pipeline, stage) = if names.iter().any(|n| n == target) {
        (target, None)
    } else {
        let split = target.match_indices('.').map(|(i, _)| i).rev().find(|&i| names.iter().any(|n| n == &target[..i]));
        match (split, target.split_once('.')) {
            (Some(i), _) => (&target[..i], Some(&target[i + 1..])),
            (None, Some((p, s))) => (p, Some(s)),
            (None, None) => (target, None),
        }
    };
    if !names.iter().any(|n| n == pipeline) {
        eprintln!("error: no pipeline called {pipeline:?}; the host runs {names:?}");
        return Ok(ExitCode::FAILURE);
    }
    let mut after: Option<u64> = None;
    let mut printed = 0usize;
    let out = std::io::stdout();
    while limit.is_none_or(|l| printed < l) {
        let mut path = format!("/pipelines/{pipeline}/tap?wait_ms=1000&limit=100");
        if let Some(s) = stage {
            path.push_str(&format!("&stage={s}"));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        let answer = admin.call("GET", &path, None, &[])?;
        if answer.status != 200 {
            eprintln!("error: {}", answer.error());
            return Ok(ExitCode::FAILURE);
        }
        let body = answer.json();
        after = body["next"].as_u64().or(after);
        let mut lock = out.lock();
        for r in body["records"].as_array().into_iter().flatten() {
            if limit.is_some_and(|l| printed >= l) {
                break;
            }
            let line = serde_json::json!({"time": r["time"], "stage": body["stage"], "key": r["key"], "value": r["value"]});
            writeln!(lock, "{line}")?;
            printed += 1;
        }
        lock.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn status(config: &HostConfig, json: bool) -> anyhow::Result<ExitCode> {
    let answer = weir::client::Admin::new(config)?.call("GET", "/pipelines", None, &[])?;
    if answer.status != 200 {
        eprintln!("error: {}", answer.error());
        return Ok(ExitCode::FAILURE);
    }
    let pipelines = answer.json();
    if json {
        println!("{}", serde_json::to_string_pretty(&pipelines)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = pipelines.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no pipelines (apply one with `weir apply FILE`)");
    }
    for p in &list {
        let paused = if p["paused"].as_bool() == Some(true) { ", paused" } else { "" };
        println!(
            "{}  {}{paused}  version {}  {}",
            p["name"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["version"],
            p["file"].as_str().unwrap_or("")
        );
        if let Some(error) = p["error"].as_str() {
            println!("  error: {error}");
        }
        for s in p["stages"].as_array().into_iter().flatten() {
            println!(
                "  {:<9} {:<20} in {:>10}  out {:>10}  rejected {:>6}  errors {:>4}  queued {:>3}",
                s["kind"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or(""),
                s["records_in"],
                s["records_out"],
                s["rejected"],
                s["errors"],
                s["queue_depth"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn test(config: &HostConfig, paths: Vec<PathBuf>, junit: Option<&Path>) -> anyhow::Result<ExitCode> {
    // Refused records are what tests are about; the report says what matters.
    init_logs("error");
    let registry = Registry::for_config(config);
    let paths = if paths.is_empty() { vec![config.pipelines.clone()] } else { paths };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(weir::testing::test_files(&p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?);
        } else {
            files.push(p);
        }
    }
    if files.is_empty() {
        eprintln!("error: no test files (*.test.yaml) found");
        return Ok(ExitCode::FAILURE);
    }
    let mut outcomes = Vec::new();
    for file in &files {
        let outcome = weir::testing::run_file(file, &registry);
        if let Some(e) = &outcome.error {
            println!("FAIL {}: {e}", file.display());
        }
        for t in &outcome.tests {
            if t.failures.is_empty() {
                println!("ok   {}: {}", file.display(), t.name);
            } else {
                println!("FAIL {}: {}", file.display(), t.name);
                for f in &t.failures {
                    println!("  {}", f.replace('\n', "\n  "));
                }
            }
        }
        outcomes.push(outcome);
    }
    let tests: usize = outcomes.iter().map(|o| o.tests.len()).sum();
    let failed_tests: usize = outcomes.iter().map(|o| o.tests.iter().filter(|t| !t.failures.is_empty()).count()).sum();
    let broken = outcomes.iter().filter(|o| o.error.is_some()).count();
    let failed = failed_tests + broken;
    let unrun = if broken > 0 { format!(" ({broken} files could not run)") } else { String::new() };
    println!("\n{tests} tests in {} files: {} passed, {failed_tests} failed{unrun}", outcomes.len(), tests - failed_tests);
    if let Some(path) = junit {
        std::fs::write(path, weir::testing::junit(&outcomes)).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn plugins(config: &HostConfig, json: bool) -> anyhow::Result<ExitCode> {
    let registry = Registry::for_config(config);
    let listing = weir::loader::listing::Listing::new(&registry, config);
    if json {
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("weir {} loads plugin libraries of ABI {} and older minors of its major", env!("CARGO_PKG_VERSION"), listing.host_abi);
    for s in &listing.searched {
        println!("searched: {} ({})", s.dir.display(), s.by);
    }
    for l in &listing.libraries {
        let built = [l.sdk.as_deref(), l.compiler.as_deref(), l.target.as_deref(), l.profile.as_deref()];
        let built: Vec<&str> = built.into_iter().flatten().collect();
        let built = if built.is_empty() { l.build.clone() } else { built.join(", ") };
        println!("\n{}\n  library {} {} (ABI {}; {})", l.path.display(), l.name, l.version, l.abi, built);
        for p in &l.plugins {
            println!("  {:<9} {:<14} {}", p.kind, p.name, p.description);
        }
    }
    if !listing.broken.is_empty() {
        println!("\nnot usable:");
        for b in &listing.broken {
            println!("  {}: {}", b.path.display(), b.reason);
        }
    }
    if !listing.skipped.is_empty() {
        println!("\nnot loaded (test and example libraries; name their directory with --plugins to load them):");
        for b in &listing.skipped {
            println!("  {}", b.path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn new_plugin(name: String, kind: weir::scaffold::Kind, dir: Option<PathBuf>, sdk: Option<String>) -> anyhow::Result<ExitCode> {
    use weir::scaffold::{generate, Request, Sdk};
    let sdk = sdk.as_deref().map(Sdk::parse).unwrap_or_else(Sdk::this_build);
    let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
    if let Sdk::Version(v) = &sdk {
        eprintln!(
            "note: the crate takes weir-plugin {v} from the registry; pass --sdk PATH to build against a checkout's plugins/sdk instead"
        );
    }
    let files = generate(&Request { name, kind, dir: dir.clone(), sdk })?;
    for f in &files {
        println!("wrote {}", f.display());
    }
    println!("\nnext: cd {} && cargo build --release && cargo test (its README.md says how to load it)", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn pretty(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

fn schema(config: &HostConfig, out: &Path, check: bool) -> anyhow::Result<ExitCode> {
    let registry = Registry::for_config(config);
    let mut files: Vec<(PathBuf, String)> = vec![
        (out.join("pipeline.schema.json"), pretty(&schemars::schema_for!(PipelineSpec))?),
        (out.join("weir.schema.json"), pretty(&schemars::schema_for!(HostConfig))?),
        (out.join("pipeline-test.schema.json"), pretty(&schemars::schema_for!(weir::testing::TestFile))?),
        (out.join("plugins-listing.schema.json"), pretty(&schemars::schema_for!(weir::loader::listing::Listing))?),
    ];
    for p in registry.plugins.values() {
        files.push((out.join("plugins").join(format!("{}-{}.schema.json", p.kind.name(), p.name)), pretty(&p.schema)?));
    }
    let mut drifted = Vec::new();
    for (path, text) in &files {
        if check {
            if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
                drifted.push(path.display().to_string());
            }
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, text)?;
            println!("wrote {}", path.display());
        }
    }
    if !drifted.is_empty() {
        eprintln!(
            "error: generated schemas differ from the committed ones: {}\nrun `cargo run -p weir -- schema` and commit the result",
            drifted.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
