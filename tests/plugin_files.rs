//! Plugin library files that cannot be mapped (cut short, still being written, rewritten in
//! place) are refused with the reason and never take the host down; the private copies Weir
//! maps are removed; test and example libraries stay out of a default `weir`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Where to cut a real plugin library (validate's, one of the larger ones): at 4 KiB, at
/// 64 KiB and in the middle.
fn cuts() -> Vec<(String, u64)> {
    let size = std::fs::metadata(bin_dir().join("libweir_validate.so")).unwrap().len();
    vec![("4k".into(), 4096), ("64k".into(), 65_536), ("mid".into(), size / 2)]
}

/// A plugin directory with copies of the http, file and noop libraries from the build.
fn good_plugins(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for lib in ["libweir_http.so", "libweir_file.so", "libweir_noop.so"] {
        std::fs::copy(bin_dir().join(lib), plugins.join(lib)).unwrap();
    }
    plugins
}

/// Writes the first `len` bytes of the validate library to `path`, as a copy cut short.
fn cut(path: &Path, len: u64) {
    let bytes = std::fs::read(bin_dir().join("libweir_validate.so")).unwrap();
    std::fs::write(path, &bytes[..len as usize]).unwrap();
}

/// A plugin directory with the good libraries and the validate library cut at each point,
/// as `libcut_<name>.so`.
fn plugins_with_cuts(dir: &Path) -> PathBuf {
    let plugins = good_plugins(dir);
    for (name, len) in cuts() {
        cut(&plugins.join(format!("libcut_{name}.so")), len);
    }
    plugins
}

fn thousands(n: u64) -> String {
    let d = n.to_string();
    d.chars().enumerate().flat_map(|(i, c)| (i > 0 && (d.len() - i).is_multiple_of(3)).then_some(',').into_iter().chain([c])).collect()
}

/// An http → file pipeline on `port` writing to `out`.
fn http_to_file(pipelines: &Path, port: u16, out: &Path) {
    write_pipeline(
        pipelines,
        "ingest",
        &format!(
            "source: {{plugin: http, config: {{listen: \"127.0.0.1:{port}\"}}}}\ntransforms: [{{plugin: noop}}]\nsinks: [{{plugin: file, config: {{path: {}}}}}]\n",
            out.display()
        ),
    );
}

fn written(out: &Path) -> usize {
    std::fs::read_to_string(out).unwrap_or_default().lines().count()
}

// Observed before: with a truncated copy of a plugin in the plugin directory, `weir plugins`
// exited with status 135 (SIGBUS in the dynamic loader) and printed nothing.
#[test]
fn weir_plugins_lists_truncated_libraries_as_unusable_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_with_cuts(dir.path());
    let out = weir(&["plugins", "--json", "--plugins", plugins.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listing["libraries"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["weir-file", "weir-http", "weir-noop"], "{listing}");
    let broken = listing["broken"].as_array().unwrap();
    assert_eq!(broken.len(), 3, "{listing}");
    for (name, len) in cuts() {
        let b = broken.iter().find(|b| b["path"].as_str().unwrap().ends_with(&format!("libcut_{name}.so"))).expect("listed");
        let reason = b["reason"].as_str().unwrap();
        println!("{name}: {reason}");
        assert!(reason.starts_with(&format!("truncated: {} bytes, its ", thousands(len))), "{reason}");
        assert!(reason.contains("wait for the copy to finish, then reload"), "says what to do: {reason}");
    }

    let text = weir(&["plugins", "--plugins", plugins.to_str().unwrap()], &[]);
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("not usable:") && text.contains("libcut_4k.so: truncated: 4,096 bytes"), "{text}");
    assert!(text.contains("source    http"), "the good ones are listed:\n{text}");
}

// Observed before: `weir validate` with a truncated library among the plugins exited 135
// with nothing printed.
#[test]
fn weir_validate_checks_pipelines_and_names_the_truncated_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_with_cuts(dir.path());
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    http_to_file(&pipelines, 1, &dir.path().join("out.jsonl"));
    let flags = ["validate", "--plugins", plugins.to_str().unwrap()];
    let ok = weir(&[&flags[..], &[pipelines.join("ingest.yaml").to_str().unwrap()]].concat(), &[]);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert_eq!(ok.status.code(), Some(0), "{stderr}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok: "), "{ok:?}");
    assert!(stderr.contains("libcut_mid.so: not usable: truncated: "), "{stderr}");

    // A pipeline that needs the plugin of the cut library: an error that says why it is missing.
    write_pipeline(
        &pipelines,
        "checked",
        "source: {plugin: http}\ntransforms: [{plugin: validate, config: {schema: x.json}}]\nsinks: [{plugin: discard}]\n",
    );
    let bad = weir(&[&flags[..], &[pipelines.join("checked.yaml").to_str().unwrap()]].concat(), &[]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown transform plugin \"validate\"") && stderr.contains("3 library file(s) not loaded"), "{stderr}");
}

// Observed before: `weir run` with a truncated library in its plugin directory died with
// SIGBUS (exit 135) before serving anything.
#[test]
fn weir_run_starts_and_serves_with_truncated_libraries_beside_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugins_with_cuts(dir.path());
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let (port, out) = (free_port(), dir.path().join("out.jsonl"));
    http_to_file(&pipelines, port, &out);
    let weir = Weir::start(&pipelines, &["--no-watch", "--plugins", plugins.to_str().unwrap()], &[]);
    let r = post_json(&format!("http://127.0.0.1:{port}/produce"), r#"{"eventType":"x"}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(written(&out), 1);
    assert_eq!(weir.metric("weir_plugin_load_failures_total"), Some(3.0));
    let logs = weir.logs();
    assert!(logs.contains("libcut_64k.so") && logs.contains("truncated: 65,536 bytes"), "{logs}");
}

// Observed before: a running `weir` died with SIGBUS on the first reload after a truncated
// library appeared in its plugin directory, taking every pipeline with it.
#[test]
fn a_reload_refuses_a_truncated_library_and_the_pipelines_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = good_plugins(dir.path());
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let (port, out) = (free_port(), dir.path().join("out.jsonl"));
    http_to_file(&pipelines, port, &out);
    let weir = Weir::start(&pipelines, &["--no-watch", "--plugins", plugins.to_str().unwrap()], &[]);
    let url = format!("http://127.0.0.1:{port}/produce");
    assert_eq!(post_json(&url, r#"{"n":0}"#).status, 200);

    for (i, (name, len)) in cuts().into_iter().enumerate() {
        cut(&plugins.join(format!("libcut_{name}.so")), len);
        let started = Instant::now();
        let r = curl("POST", &weir.url("/reload"), None, None);
        println!("reload with libcut_{name}.so: {} in {:?}", r.status, started.elapsed());
        assert_eq!(r.status, 422, "{r:?}");
        let errors = r.json()["errors"].clone();
        let error = errors.as_array().unwrap().iter().map(|e| e.as_str().unwrap()).find(|e| e.contains(&format!("libcut_{name}.so")));
        let error = error.unwrap_or_else(|| panic!("{errors}"));
        assert!(error.contains(&format!("truncated: {} bytes", thousands(len))), "{error}");
        assert_eq!(post_json(&url, &format!(r#"{{"n":{}}}"#, i + 1)).status, 200, "the pipeline still answers");
        assert_eq!(weir.get_json("/health")["last_reload"]["result"], "failed");
    }
    // The same through SIGHUP.
    cut(&plugins.join("libcut_hup.so"), 65_536);
    assert!(Command::new("kill").args(["-HUP", &weir.pid().to_string()]).status().unwrap().success());
    wait_for("the SIGHUP reload's report", Duration::from_secs(10), || {
        weir.get_json("/health")["last_reload"]["errors"].to_string().contains("libcut_hup.so: truncated: 65,536 bytes")
    });
    assert_eq!(post_json(&url, r#"{"n":"hup"}"#).status, 200, "the pipeline still answers");
    // The same files again: already reported, not tried again; the reload is clean.
    let r = curl("POST", &weir.url("/reload"), None, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(written(&out), 5);

    // Cutting a library that is loaded and in use, in place (as `cp` over it or a full disk
    // would): Weir maps a private copy, so the running code is untouched, and the reload
    // refuses the cut file and keeps the loaded version.
    let http = plugins.join("libweir_http.so");
    std::fs::OpenOptions::new().write(true).open(&http).unwrap().set_len(65_536).unwrap();
    let r = curl("POST", &weir.url("/reload"), None, None);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("truncated: 65,536 bytes") && r.body.contains("the loaded version (weir-http"), "{}", r.body);
    for n in 0..20 {
        assert_eq!(post_json(&url, &format!(r#"{{"m":{n}}}"#)).status, 200);
    }
    assert_eq!(written(&out), 25);
    // Reported once: the next reload is clean and still runs the loaded version.
    let r = curl("POST", &weir.url("/reload"), None, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["unchanged"], serde_json::json!(["ingest"]));
    assert_eq!(post_json(&url, "{}").status, 200);
    assert_eq!(curl("GET", &weir.url("/health"), None, None).status, 200);
}

// A library still being copied (its size keeps changing) is not mapped; the reload says so
// after waiting a bounded time, and the next reload after the copy finished loads it.
#[test]
fn a_library_still_being_written_is_deferred_with_the_reason_then_loaded_once_complete() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = good_plugins(dir.path());
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let (port, out) = (free_port(), dir.path().join("out.jsonl"));
    http_to_file(&pipelines, port, &out);
    let weir = Weir::start(&pipelines, &["--no-watch", "--plugins", plugins.to_str().unwrap()], &[]);

    let bytes = std::fs::read(bin_dir().join("libweir_validate.so")).unwrap();
    let target = plugins.join("libweir_validate.so");
    let writer = {
        let target = target.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            // A slow copy: 8 s for the whole file.
            let mut f = std::fs::File::create(&target).unwrap();
            let chunk = bytes.len() / 80 + 1;
            for part in bytes.chunks(chunk) {
                f.write_all(part).unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300)); // let the copy begin: the thing under test
    let started = Instant::now();
    let r = curl("POST", &weir.url("/reload"), None, None);
    let took = started.elapsed();
    println!("reload during the copy: {} after {took:?}: {}", r.status, r.body);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("libweir_validate.so: still being written"), "{}", r.body);
    assert!(took < Duration::from_secs(8), "bounded wait: {took:?}");
    assert_eq!(post_json(&format!("http://127.0.0.1:{port}/produce"), "{}").status, 200);
    writer.join().unwrap();
    let r = curl("POST", &weir.url("/reload"), None, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("weir-validate"), "loaded once complete: {}", r.body);
}

// Observed before: every reloaded library left a copy under $TMPDIR/weir-plugins-<pid>
// that nothing removed, also after the process exited.
#[test]
fn private_copies_are_removed_at_exit_and_stale_ones_of_dead_processes_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let stale = tmp.join(format!("weir-plugins-{dead_pid}"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("1-libweir_http.so"), b"left by a killed weir").unwrap();

    let plugins = good_plugins(dir.path());
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    http_to_file(&pipelines, free_port(), &dir.path().join("out.jsonl"));
    let tmp_env = tmp.to_str().unwrap();
    let mut weir = Weir::start(&pipelines, &["--no-watch", "--plugins", plugins.to_str().unwrap()], &[("TMPDIR", tmp_env)]);
    let mine = tmp.join(format!("weir-plugins-{}", weir.pid()));
    assert!(!stale.exists(), "the dead process's copies were removed at start");
    let copies = std::fs::read_dir(&mine).unwrap().count();
    assert_eq!(copies, 3, "one private copy per loaded library");
    // A rebuilt library adds a copy on reload.
    let http = plugins.join("libweir_http.so");
    std::fs::copy(bin_dir().join("libweir_http.so"), plugins.join(".new")).unwrap();
    std::fs::rename(plugins.join(".new"), &http).unwrap();
    assert_eq!(curl("POST", &weir.url("/reload"), None, None).status, 200);
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 4);
    assert!(weir.stop().success());
    assert!(!mine.exists(), "removed at exit");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    // The short-lived commands clean up after themselves too.
    let out = common::weir(&["plugins", "--plugins", plugins.to_str().unwrap()], &[("TMPDIR", tmp_env)]);
    assert!(out.status.success());
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "weir plugins left nothing");
}

// Observed before: `weir plugins` and `weir run` from the build directory loaded and listed
// the test plugins (test-panic, test-slow, test-flaky, test-stamp) and the tutorial's
// `counter` sink beside the real ones.
#[test]
fn default_discovery_leaves_test_and_example_libraries_out_unless_their_directory_is_named() {
    let run = |args: &[&str]| {
        let out = Command::new(bin_dir().join("weir"))
            .args(args)
            .env_remove("WEIR_PLUGINS")
            .current_dir(repo())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success());
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let names = |v: &serde_json::Value, key: &str| -> Vec<String> {
        v[key].as_array().unwrap().iter().map(|l| l["name"].as_str().or(l["path"].as_str()).unwrap().to_owned()).collect()
    };
    let default = run(&["plugins", "--json"]);
    let loaded = names(&default, "libraries");
    assert!(loaded.contains(&"weir-http".to_owned()), "{loaded:?}");
    assert!(!loaded.iter().any(|n| n == "weir-test-faulty" || n == "custom-sink-example"), "{loaded:?}");
    let skipped = names(&default, "skipped");
    for lib in ["libweir_test_faulty.so", "libcustom_sink_example.so"] {
        assert!(skipped.iter().any(|p| p.ends_with(lib)), "{lib} listed as not loaded: {skipped:?}");
    }
    assert!(default["skipped"][0]["reason"].as_str().unwrap().contains("--plugins"), "says how to load it: {default}");

    let bins = bin_dir();
    let named = run(&["plugins", "--json", "--plugins", bins.to_str().unwrap()]);
    let loaded = names(&named, "libraries");
    assert!(loaded.iter().any(|n| n == "weir-test-faulty") && loaded.iter().any(|n| n == "custom-sink-example"), "{loaded:?}");
    assert!(named["skipped"].as_array().unwrap().is_empty());
}

// Observed before: a library that dlopen refuses was listed as "cannot be loaded: dlopen
// failed", without dlopen's own reason.
#[test]
fn a_library_dlopen_refuses_is_listed_with_dlopens_own_reason() {
    let dir = tempfile::tempdir().unwrap();
    let build = dir.path().join("build");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&build).unwrap();
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(build.join("dep.c"), "int weir_dep(void) { return 1; }\n").unwrap();
    std::fs::write(build.join("needs.c"), "int weir_dep(void);\nint needs(void) { return weir_dep(); }\n").unwrap();
    let cc = |args: &[&str]| assert!(Command::new("cc").args(args).current_dir(&build).status().expect("a C compiler").success());
    cc(&["-shared", "-fPIC", "-o", "libweirdep.so", "dep.c"]);
    let needs = plugins.join("libneeds.so");
    cc(&["-shared", "-fPIC", "-o", needs.to_str().unwrap(), "needs.c", "-L.", "-lweirdep"]);
    // The library it needs is gone: a valid ELF file that the dynamic loader refuses.
    std::fs::remove_file(build.join("libweirdep.so")).unwrap();
    let out = weir(&["plugins", "--json", "--plugins", plugins.to_str().unwrap()], &[]);
    assert!(out.status.success());
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = listing["broken"][0]["reason"].as_str().unwrap_or_else(|| panic!("{listing}"));
    println!("{reason}");
    assert!(reason.contains("libweirdep.so: cannot open shared object file"), "{reason}");
    assert!(reason.contains("install the libraries it needs"), "says what to do: {reason}");
    assert!(!reason.contains("weir-plugins-"), "names the file, not the private copy: {reason}");
}
