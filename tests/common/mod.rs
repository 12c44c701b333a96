//! Harness for end-to-end tests: starts the built `weir` binary on free ports, talks to
//! it with real clients (curl for HTTP), and stops it.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the repository").to_path_buf()
}

/// Where cargo put `weir` and the plugin libraries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf();
    assert!(dir.join("weir").exists(), "{} has no weir binary; run `cargo build --workspace` first", dir.display());
    dir
}

/// A loopback port nobody listens on right now, and not handed out before by this process
/// (the kernel may offer a just-released port again before its first user binds it).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `WEIR_PLUGINS` for the tests: the build directory, named explicitly so that the test-only
/// plugins (`opt_in` libraries such as `test-panic`) load from it too; a plain `weir` beside
/// a build leaves them out. `--plugins` flags given by a test take precedence.
pub fn plugins_env() -> String {
    format!("[{}]", bin_dir().display())
}

/// Runs `weir ARGS` to completion.
pub fn weir(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(bin_dir().join("weir"))
        .args(args)
        .env("WEIR_PLUGINS", plugins_env())
        .envs(envs.iter().copied())
        .current_dir(repo())
        .output()
        .expect("run weir")
}

/// The JSON lines of `path` (none when it does not exist yet); panics on a line that is
/// not JSON, naming it.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: not JSON ({e}): {l}", path.display(), i + 1)))
        .collect()
}

/// Waits for `cond` to hold, polling, up to `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// As [`wait_for`]; on timeout the panic also shows what `context` says (a log's tail).
pub fn wait_for_or(what: &str, limit: Duration, mut cond: impl FnMut() -> bool, context: impl FnOnce() -> String) {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A response from curl.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends a request with curl (an independent HTTP client).
pub fn curl(method: &str, url: &str, content_type: Option<&str>, body: Option<&[u8]>) -> Reply {
    curl_with(method, url, &[], content_type, body)
}

/// Sends a request with curl and extra headers.
pub fn curl_with(method: &str, url: &str, headers: &[(&str, &str)], content_type: Option<&str>, body: Option<&[u8]>) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-D", "-", "-X", method, url, "--max-time", "20"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    if let Some(ct) = content_type {
        cmd.args(["-H", &format!("Content-Type: {ct}")]);
    }
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("curl is installed");
    if let Some(b) = body {
        child.stdin.take().unwrap().write_all(b).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, headers: head.to_owned(), body: body.to_owned() }
}

/// POSTs JSON.
pub fn post_json(url: &str, body: &str) -> Reply {
    curl("POST", url, Some("application/json"), Some(body.as_bytes()))
}

/// Starts `weir ARGS` from the repository root with the tests' plugins, its log to `log`.
pub fn spawn_weir(args: &[&str], envs: &[(&str, &str)], log: &Path) -> Child {
    Command::new(bin_dir().join("weir"))
        .args(args)
        .env("WEIR_PLUGINS", plugins_env())
        .envs(envs.iter().copied())
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start weir")
}

/// The plugin ABI this checkout's host speaks, `(major, minor)`, read from the SDK's header.
pub fn host_abi() -> (u16, u16) {
    let header = std::fs::read_to_string(repo().join("plugins/sdk/src/abi.rs")).unwrap();
    let constant = |name: &str| -> u16 {
        let prefix = format!("pub const {name}: u16 = ");
        let line = header.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("{name} in abi.rs"));
        line.trim_end_matches(';').parse().unwrap()
    };
    (constant("ABI_MAJOR"), constant("ABI_MINOR"))
}

/// Runs `weir ARGS` (a `run --once`, say) to its end, its log to `log`; killed after `limit`.
/// Its exit status, `None` when it did not end in time.
pub fn weir_until_done(args: &[&str], envs: &[(&str, &str)], log: &Path, limit: Duration) -> Option<std::process::ExitStatus> {
    let mut child = spawn_weir(args, envs, log);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `weir run --once` over `pipelines` with the built-in plugins and those in `extra` (a
/// plugin author's build directory): whether it succeeded within a minute, and its log
/// (kept in `log`).
pub fn run_once_with_plugins(pipelines: &Path, extra: &Path, log: &Path) -> (bool, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let (builtin, extra) = (bin_dir().display().to_string(), extra.display().to_string());
    let pipelines = pipelines.display().to_string();
    let args = ["run", "--once", "--no-watch", "--admin", &admin, "--pipelines", &pipelines, "--plugins", &builtin, "--plugins", &extra];
    let status = weir_until_done(&args, &[], log, Duration::from_secs(60));
    (status.is_some_and(|s| s.success()), std::fs::read_to_string(log).unwrap_or_default())
}

/// A running `weir run`, stopped (SIGTERM, then waited for) when dropped.
pub struct Weir {
    child: Option<Child>,
    pub admin: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Weir {
    /// Starts `weir run --pipelines DIR` with the admin API on a free port; waits until
    /// `/health` answers.
    pub fn start(pipelines: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Weir {
        Weir::start_until(pipelines, extra, envs, |w| curl("GET", &w.url("/health"), None, None).status != 0)
    }

    /// Like [`Weir::start`], ready when `ready` says so (for an admin API that does not
    /// speak plain HTTP).
    pub fn start_until(pipelines: &Path, extra: &[&str], envs: &[(&str, &str)], ready: impl Fn(&Weir) -> bool) -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("weir.log");
        let admin = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["run", "--pipelines", pipelines.to_str().unwrap(), "--admin", &admin];
        args.extend_from_slice(extra);
        let child = spawn_weir(&args, envs, &log);
        let mut w = Weir { child: Some(child), admin, log, _dir: dir };
        wait_for("the admin API", Duration::from_secs(20), || {
            if let Some(status) = w.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weir exited with {status}:\n{}", w.logs());
            }
            std::net::TcpStream::connect(&w.admin).is_ok() && ready(&w)
        });
        w
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        curl("GET", &self.url(path), None, None).json()
    }

    pub fn metrics(&self) -> String {
        curl("GET", &self.url("/metrics"), None, None).body
    }

    /// The value of one series in `/metrics` (exact label set).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("weir did not stop within 30 s after SIGTERM:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // Killed, it could not remove its private copies of the plugin libraries (the
            // next `weir run` would); a test leaves no 100 MiB of debug libraries behind.
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("weir-plugins-{}", c.id())));
        }
    }
}

/// Writes a pipeline file into `dir`.
pub fn write_pipeline(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A temporary directory for one test's pipelines and outputs, with a free port for its
/// HTTP source: the usual prologue (temp dir, port, pipeline file, `weir run`) in one place.
///
/// Pipeline text given to [`Scene::pipeline`] may name the port as `@PORT@` and the
/// directory as `@DIR@`; they are replaced before the file is written, so the YAML needs
/// neither `format!` nor doubled braces for them. The `@…@` form is not Rust's `{…}` (it
/// passes through a `format!` unchanged) nor weir's own `${VAR}`, which is left for weir
/// to expand from the environment.
pub struct Scene {
    /// The temporary directory, removed when the scene is dropped.
    pub dir: tempfile::TempDir,
    /// A free port, for the pipelines' HTTP source (`@PORT@`).
    pub port: u16,
    /// Where the pipeline files go and weir reads them: `dir` itself, or its `pipelines`
    /// subdirectory (see [`Scene::nested`]).
    pub pipelines: PathBuf,
}

impl Scene {
    /// A new directory holding the pipeline files itself, and a free port.
    pub fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let pipelines = dir.path().to_path_buf();
        Scene { dir, port: free_port(), pipelines }
    }

    /// As [`Scene::new`], with the pipeline files in the subdirectory `pipelines`, apart
    /// from the outputs (`@DIR@` and [`Scene::path`] stay the directory above).
    pub fn nested() -> Scene {
        let mut scene = Scene::new();
        scene.pipelines = scene.dir.path().join("pipelines");
        std::fs::create_dir(&scene.pipelines).unwrap();
        scene
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes pipeline `name` from `yaml` with `@PORT@` replaced by the port and `@DIR@` by
    /// the directory (nothing else is touched); returns the file's path.
    pub fn pipeline(&self, name: &str, yaml: &str) -> PathBuf {
        let yaml = yaml.replace("@PORT@", &self.port.to_string()).replace("@DIR@", &self.dir.path().display().to_string());
        write_pipeline(&self.pipelines, name, &yaml)
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts `weir run` on the pipeline files ([`Weir::start`] with these arguments and
    /// environment).
    pub fn start(&self, extra: &[&str], envs: &[(&str, &str)]) -> Weir {
        Weir::start(&self.pipelines, extra, envs)
    }
}

/// Builds a shared library from Rust source with rustc.
pub fn cdylib(dir: &Path, name: &str, source: &str) -> std::path::PathBuf {
    let src = dir.join(format!("{name}.rs"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(format!("lib{name}.so"));
    let status =
        Command::new("rustc").args(["--crate-type", "cdylib", "--edition", "2021", "-o"]).arg(&out).arg(&src).status().expect("rustc");
    assert!(status.success(), "rustc failed on {name}");
    out
}

/// A library that speaks plugin ABI 2.0 and exports a sink called `future-sink`.
pub const ABI_V2: &str = r#"
#[repr(C)] pub struct StrRef { ptr: *const u8, len: usize }
#[repr(C)] pub struct Manifest { abi_major: u16, abi_minor: u16, struct_size: u32, name: StrRef, version: StrRef, build: StrRef, count: u32, plugins: *const u8 }
unsafe impl Sync for Manifest {}
const fn s(t: &'static str) -> StrRef { StrRef { ptr: t.as_ptr(), len: t.len() } }
static M: Manifest = Manifest { abi_major: 2, abi_minor: 0, struct_size: 256, name: s("future-plugins"), version: s("9.0.0"), build: s("test"), count: 0, plugins: std::ptr::null() };
#[no_mangle] pub extern "C" fn weir_plugin_manifest_v1() -> *const Manifest { &M }
"#;

/// The resident memory of process `pid`, in MiB (0 once it is gone).
pub fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// `promtool check metrics` on an exposition: whether it passed, and what it said (empty
/// when clean).
pub fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/deps.sh)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A client posting `{"id":"ev-N"}` to a URL one request at a time until finished, keeping
/// the ids answered 200 and what any other answer said; curl fails the thread (and so
/// [`Load::finish`]) on a refused connection.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    client: std::thread::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Load {
    /// Starts posting to `url`.
    pub fn start(url: &str) -> Load {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (flag, url) = (stop.clone(), url.to_owned());
        let client = std::thread::spawn(move || {
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                let id = format!("ev-{n}");
                let r = post_json(&url, &format!(r#"{{"id":"{id}"}}"#));
                if r.status == 200 {
                    ok.push(id);
                } else {
                    failed.push(format!("{} {}", r.status, r.body));
                }
                n += 1;
            }
            (ok, failed)
        });
        Load { stop, client }
    }

    /// Stops posting; the ids accepted and the failed answers.
    pub fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.client.join().expect("the client saw no refused connection")
    }
}
