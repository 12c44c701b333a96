//! Stage counters on the admin API's `/metrics` stay continuous across reloads and
//! restarts under load: scraped with curl all along, no counter series ever decreases, each
//! label set appears once (also while two versions run side by side), `promtool` accepts
//! every exposition, and the final counts add up to everything the versions handled.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Pipeline `counted` at `version`: http on the scene's port → noop → `out.jsonl`.
fn pipeline(version: u32) -> String {
    format!(
        "name: counted\ndescription: version {version}\nsource: {{plugin: http, config: {{listen: \"127.0.0.1:@PORT@\"}}}}\ntransforms:\n  - plugin: noop\nsinks:\n  - plugin: file\n    config: {{path: @DIR@/out.jsonl}}\n"
    )
}

/// The pipeline's counter samples (`_total`, and histograms' `_bucket`, `_count`, `_sum`)
/// by series; fails on a series that appears twice.
fn counters(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut map = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && l.contains("pipeline=\"counted\"")) {
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| format!("bad line {line}"))?;
        let name = series.split('{').next().unwrap_or_default();
        if !["_total", "_bucket", "_count", "_sum"].iter().any(|s| name.ends_with(s)) {
            continue;
        }
        let value: f64 = value.parse().map_err(|_| format!("bad value in {line}"))?;
        if map.insert(series.to_owned(), value).is_some() {
            return Err(format!("series {series} appears twice"));
        }
    }
    Ok(map)
}

#[test]
fn stage_counters_never_go_back_across_five_reloads_and_a_restart_under_load() {
    let scene = Scene::nested();
    let out = scene.path("out.jsonl");
    scene.pipeline("counted", &pipeline(0));
    let weir = scene.start(&["--no-watch"], &[]);
    let produce = scene.url("/produce");
    let metrics_url = weir.url("/metrics");

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (stop, accepted, produce) = (stop.clone(), accepted.clone(), produce.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let events: Vec<String> = (0..10).map(|i| format!(r#"{{"id":"c{c}-{n}-{i}"}}"#)).collect();
                    let r = post_json(&produce, &format!("[{}]", events.join(",")));
                    if r.status == 200 {
                        accepted.fetch_add(r.json()["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    // Scrapes all along, reloads included; every scrape is compared with the one before.
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, problems, scrapes, metrics_url) = (stop.clone(), problems.clone(), scrapes.clone(), metrics_url.clone());
        std::thread::spawn(move || {
            let mut last: BTreeMap<String, f64> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let text = curl("GET", &metrics_url, None, None).body;
                let n = scrapes.fetch_add(1, Ordering::Relaxed);
                if n % 10 == 0 {
                    let (ok, said) = promtool_check(&text);
                    if !ok || !said.trim().is_empty() {
                        problems.lock().unwrap().push(format!("promtool: {said}"));
                    }
                }
                match counters(&text) {
                    Err(e) => problems.lock().unwrap().push(e),
                    Ok(now) => {
                        for (series, before) in &last {
                            match now.get(series) {
                                Some(v) if v < before => problems.lock().unwrap().push(format!("{series} went from {before} to {v}")),
                                None => problems.lock().unwrap().push(format!("{series} disappeared")),
                                _ => {}
                            }
                        }
                        last = now;
                    }
                }
            }
        })
    };

    let in_total = r#"weir_stage_records_in_total{pipeline="counted",stage="file",plugin="file"}"#;
    wait_for("records before the first reload", Duration::from_secs(10), || weir.metric(in_total).unwrap_or(0.0) > 0.0);
    for version in 1..=5u32 {
        let before = weir.metric(in_total).unwrap();
        scene.pipeline("counted", &pipeline(version));
        let r = curl("POST", &weir.url("/reload"), None, None);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["replaced"], serde_json::json!(["counted"]), "{r:?}");
        assert!(weir.metric(in_total).unwrap() >= before, "the counter went back after reload {version}");
        // The new version takes records, and the counter goes on from where it was.
        let at_reload = weir.metric(in_total).unwrap();
        wait_for("records in the new version", Duration::from_secs(10), || weir.metric(in_total).unwrap() > at_reload);
    }
    let r = curl("POST", &weir.url("/pipelines/counted/restart"), None, None);
    assert!(r.status < 300, "{r:?}");
    let at_restart = weir.metric(in_total).unwrap();
    wait_for("records after the restart", Duration::from_secs(10), || weir.metric(in_total).unwrap() > at_restart);
    assert_eq!(weir.get_json("/pipelines/counted")["version"], 7, "five reloads and a restart replaced it six times");
    // A fast run may be over before the scraper has looked often enough.
    wait_for("twenty scrapes", Duration::from_secs(20), || scrapes.load(Ordering::Relaxed) >= 20);

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    scraper.join().unwrap();
    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{} of {} scrapes had problems: {problems:?}", problems.len(), scrapes.load(Ordering::Relaxed));
    assert!(scrapes.load(Ordering::Relaxed) >= 20, "scraped all along");

    // Everything every version handled is in the series: the file holds one line per
    // delivered record, and the counters count them all.
    let accepted = accepted.load(Ordering::Relaxed) as f64;
    let written = std::fs::read_to_string(&out).unwrap().lines().count() as f64;
    assert!(written >= accepted && accepted > 0.0, "written {written}, accepted {accepted}");
    let series = |name: &str, stage: &str, plugin: &str| {
        weir.metric(&format!(r#"{name}{{pipeline="counted",stage="{stage}",plugin="{plugin}"}}"#)).unwrap_or(-1.0)
    };
    assert_eq!(series("weir_stage_records_out_total", "file", "file"), written, "file sink: delivered by all versions");
    assert_eq!(series("weir_stage_records_in_total", "noop", "noop"), written);
    assert_eq!(series("weir_stage_records_out_total", "http", "http"), written, "source: emitted by all versions");
    let accepted_outcome = weir.metric(r#"weir_pipeline_records_total{pipeline="counted",stage="http",plugin="http",outcome="accepted"}"#);
    assert_eq!(accepted_outcome, Some(written));
    // The admin API's per-version counts are the current version's own.
    let own = weir.get_json("/pipelines/counted")["stages"].as_array().unwrap().iter().find(|s| s["name"] == "file").unwrap()
        ["records_out"]
        .as_f64()
        .unwrap();
    assert!(own < written, "the current version's own count ({own}) is part of the series ({written})");
    eprintln!(
        "figures: {} scrapes over 5 reloads and a restart, {written} events written, {accepted} accepted, counted by the series {written}, by the last version alone {own}",
        scrapes.load(Ordering::Relaxed)
    );
}
