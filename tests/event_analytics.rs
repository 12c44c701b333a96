//! The Event Analytics Platform example as shipped (`examples/event-analytics`), end to end
//! with the real PostgreSQL and Redis: keys, authenticated multi-tenant ingest, dedupe of a
//! retried batch, and each query against answers computed here from the generated events.

mod common;
#[path = "common/page.rs"]
mod page;
#[path = "common/postgres.rs"]
mod pg;
#[path = "common/socketio.rs"]
mod socketio;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use page::{render, Page};
use pg::{psql, Schema, SERVER};
use serde_json::{json, Value};

const ADMIN: &str = "e2e-admin-key-0123456789abcdef";

/// A request with curl and extra headers; the status, the headers (lower-cased) and the body.
fn api(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&Value>) -> (u16, String, Value) {
    let text = body.map(Value::to_string);
    let r = curl_with(method, url, headers, text.as_ref().map(|_| "application/json"), text.as_deref().map(str::as_bytes));
    let json = if r.body.is_empty() { Value::Null } else { r.json() };
    (r.status, r.headers.to_ascii_lowercase(), json)
}

/// The generated events: `users` users over five days of January 2024, seeded.
fn events(users: usize, per_user: usize) -> Vec<Value> {
    const NAMES: [&str; 5] = ["page_view", "add_to_cart", "checkout_start", "purchase", "signup"];
    let mut seed: u64 = 42;
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut out = Vec::new();
    for u in 0..users {
        for e in 0..per_user {
            let (day, hour, minute) = (1 + next(5), next(24), next(60));
            out.push(json!({
                "eventId": format!("e-{u}-{e}"),
                "userId": format!("user{u}"),
                "eventName": NAMES[next(5) as usize],
                "timestamp": format!("2024-01-{day:02}T{hour:02}:{minute:02}:{:02}Z", e % 60),
                "properties": {"n": e, "plan": if u % 3 == 0 { "pro" } else { "free" }},
                "sessionId": format!("s-{u}-{}", e / 4),
                "orgId": "someone-else", "projectId": "not-mine",
            }));
        }
    }
    out
}

struct Api {
    weir: Weir,
    base: String,
    listen: String,
    _schema: Schema,
}

impl Api {
    fn start() -> Api {
        Self::start_with(&[])
    }

    /// With more environment variables for the example.
    fn start_with(more: &[(&str, &str)]) -> Api {
        Self::start_from(&repo().join("examples/event-analytics"), more)
    }

    /// The pipelines in `dir` (the example's, or a variant of it).
    fn start_from(dir: &std::path::Path, more: &[(&str, &str)]) -> Api {
        let schema = Schema::new("analytics");
        let listen = format!("127.0.0.1:{}", free_port());
        let weir = Self::run_from(dir, &schema.0, &listen, more);
        Api { weir, base: format!("http://{listen}"), listen, _schema: schema }
    }

    /// `weir run` of the example on `schema`, once its API answers.
    fn run(schema: &str, listen: &str, more: &[(&str, &str)]) -> Weir {
        Self::run_from(&repo().join("examples/event-analytics"), schema, listen, more)
    }

    fn run_from(dir: &std::path::Path, schema: &str, listen: &str, more: &[(&str, &str)]) -> Weir {
        let mut envs =
            vec![("DATABASE_URL", SERVER), ("ANALYTICS_ADMIN_KEY", ADMIN), ("ANALYTICS_SCHEMA", schema), ("EVENTS_HTTP_LISTEN", listen)];
        envs.extend_from_slice(more);
        let weir = Weir::start(dir, &[], &envs);
        let health = format!("http://{listen}/health");
        // Up, with its rollups kept (so whole-day queries read them).
        wait_for("the analytics API", std::time::Duration::from_secs(20), || {
            let (status, _, body) = api("GET", &health, &[], None);
            status == 200 && body["rollups"] == true
        });
        weir
    }

    /// Stops weir and starts it again on the same tables.
    fn restart(&mut self) {
        assert!(self.weir.stop().success());
        self.weir = Self::run(&self._schema.0, &self.listen, &[]);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn key(&self, name: &str, org: &str, project: &str, extra: Value) -> (String, String) {
        let mut body = json!({"name": name, "orgId": org, "projectId": project});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, _, created) = api("POST", &self.url("/api/v1/keys"), &[("X-Admin-Key", ADMIN)], Some(&body));
        assert_eq!(status, 201, "{created}");
        (created["id"].as_str().unwrap().to_owned(), created["key"].as_str().unwrap().to_owned())
    }

    fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let (status, _, body) = api("GET", &self.url(path), &[("X-API-Key", key)], None);
        (status, body)
    }

    fn post_events(&self, key: &str, events: &Value) -> (u16, Value) {
        let (status, _, body) = api("POST", &self.url("/api/v1/events"), &[("X-API-Key", key)], Some(events));
        (status, body)
    }
}

#[test]
fn keys_tenancy_ingest_dedupe_and_queries_answer_as_computed_from_the_events() {
    let api_ = Api::start();
    let (status, _, _) = api("POST", &api_.url("/api/v1/keys"), &[], Some(&json!({"name": "x", "orgId": "o", "projectId": "p"})));
    assert_eq!(status, 401, "creating a key needs the admin key");
    let (_, key_a) = api_.key("web", "org-a", "proj-a", json!({}));
    let (_, key_b) = api_.key("other tenant", "org-b", "proj-b", json!({}));
    let (_, listed, keys) = api("GET", &api_.url("/api/v1/keys"), &[("X-Admin-Key", ADMIN)], None);
    assert!(listed.starts_with("http/1.1 200"), "{listed}");
    let text = keys.to_string();
    assert!(!text.contains(&key_a) && !text.contains(&key_b), "secrets are never listed: {text}");
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2, "{keys}");
    let stored = psql(SERVER, &format!("SELECT string_agg(key_digest, ',') FROM {}.api_keys", api_._schema.0));
    assert!(!stored.contains(&key_a[3..]), "keys are stored as digests");

    // Ingest in batches of up to 1,000 (the seed's limit), one single event, one bad event.
    let all = events(40, 30);
    for chunk in all.chunks(1000) {
        let (status, body) = api_.post_events(&key_a, &Value::Array(chunk.to_vec()));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], chunk.len(), "{body}");
        assert_eq!(body["duplicates"], 0, "{body}");
    }
    let (status, body) = api_.post_events(&key_a, &json!({"eventName": "page_view"}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("userId"), "400 names the field: {body}");
    let (status, body) = api_.post_events(&key_a, &json!([all[0].clone(), {"userId": "u", "eventName": "e", "timestamp": "soon"}]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicates"], 1, "a retried event is a duplicate: {body}");
    assert_eq!(body["rejected"], json!([{"index": 1, "error": "timestamp \"soon\" is not an ISO-8601 time such as 2024-01-01T10:00:00Z"}]));
    // The retried first batch stores nothing twice.
    let (status, body) = api_.post_events(&key_a, &Value::Array(all[..1000].to_vec()));
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["accepted"].as_u64(), body["duplicates"].as_u64()), (Some(0), Some(1000)), "{body}");
    // The other tenant may use the same event ids: they are its own.
    let (status, body) = api_.post_events(&key_b, &Value::Array(all[..10].to_vec()));
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(10)), "{body}");
    let rows = psql(SERVER, &format!("SELECT org_id, project_id, count(*) FROM {}.event_log GROUP BY 1, 2 ORDER BY 1", api_._schema.0));
    assert_eq!(rows, "org-a|proj-a|1200\norg-b|proj-b|10", "the tenant comes from the key, never from the body");
    // A query rolls up what is queued before it reads the rollups.
    let (status, _) = api_.get(&key_b, "/api/v1/events/summary?startDate=2024-01-01&endDate=2024-01-31");
    assert_eq!(status, 200);
    let rolled = psql(
        SERVER,
        &format!("SELECT org_id, sum(events) FROM {}.rollup_days WHERE event_name <> '' GROUP BY 1 ORDER BY 1", api_._schema.0),
    );
    assert_eq!(rolled, "org-a|1200\norg-b|10", "the rollups count each stored event once, retries included");
    let user_days: BTreeSet<(&str, &str)> =
        all.iter().map(|e| (e["userId"].as_str().unwrap(), &e["timestamp"].as_str().unwrap()[..10])).collect();
    let counted =
        psql(SERVER, &format!("SELECT sum(users) FROM {}.rollup_days WHERE org_id = 'org-a' AND event_name = ''", api_._schema.0));
    assert_eq!(counted, user_days.len().to_string(), "each user counted once per day, across batches");

    // Summary over a range, computed here.
    let in_range: Vec<&Value> = all.iter().filter(|e| e["timestamp"].as_str().unwrap() < "2024-01-04").collect();
    // Whole days are read from the day sets; a range given as times, from the rollups' events.
    for range in ["startDate=2024-01-01&endDate=2024-01-03", "startDate=2024-01-01T00:00:00Z&endDate=2024-01-03T23:59:59.999Z"] {
        let (status, summary) = api_.get(&key_a, &format!("/api/v1/events/summary?{range}"));
        assert_eq!(status, 200, "{summary}");
        assert_eq!(summary["totalEvents"], in_range.len(), "{summary}");
        let users: BTreeSet<&str> = in_range.iter().map(|e| e["userId"].as_str().unwrap()).collect();
        assert_eq!(summary["uniqueUsers"], users.len());
        let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &in_range {
            *by_name.entry(e["eventName"].as_str().unwrap()).or_default() += 1;
        }
        assert_eq!(summary["eventsByName"], json!(by_name));
        let times: Vec<&str> = in_range.iter().map(|e| e["timestamp"].as_str().unwrap()).collect();
        assert_eq!(summary["firstEventAt"], times.iter().min().unwrap().replace('Z', ".000Z"));
        assert_eq!(summary["lastEventAt"], times.iter().max().unwrap().replace('Z', ".000Z"));
    }
    let (_, whole) = api_.get(&key_b, "/api/v1/events/summary");
    assert_eq!(whole["totalEvents"], 10, "another tenant sees only its own: {whole}");

    // Daily purchases with unique users, every day of the range listed.
    for range in ["startDate=2024-01-01&endDate=2024-01-07", "startDate=2024-01-01T00:00:00Z&endDate=2024-01-07T23:59:59.999Z"] {
        let (status, metrics) = api_.get(&key_a, &format!("/api/v1/metrics?event=purchase&interval=daily&{range}"));
        assert_eq!(status, 200, "{metrics}");
        let buckets = metrics["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 7, "{metrics}");
        for (d, b) in buckets.iter().enumerate() {
            let day = format!("2024-01-{:02}", d + 1);
            assert_eq!(b["start"], format!("{day}T00:00:00.000Z"));
            let of_day: Vec<&Value> =
                all.iter().filter(|e| e["eventName"] == "purchase" && e["timestamp"].as_str().unwrap().starts_with(&day)).collect();
            assert_eq!(b["count"], of_day.len(), "{day}: {b}");
            let users: BTreeSet<&str> = of_day.iter().map(|e| e["userId"].as_str().unwrap()).collect();
            assert_eq!(b["uniqueUsers"], users.len(), "{day}: {b}");
        }
    }

    // Hourly, from the rollups' events: each hour of 2024-01-02 and its users.
    let (status, hourly) = api_.get(&key_a, "/api/v1/metrics?interval=hourly&startDate=2024-01-02&endDate=2024-01-02");
    assert_eq!(status, 200, "{hourly}");
    let hours = hourly["buckets"].as_array().unwrap();
    assert_eq!(hours.len(), 24, "{hourly}");
    for (h, b) in hours.iter().enumerate() {
        let prefix = format!("2024-01-02T{h:02}");
        let of_hour: Vec<&Value> = all.iter().filter(|e| e["timestamp"].as_str().unwrap().starts_with(&prefix)).collect();
        let users: BTreeSet<&str> = of_hour.iter().map(|e| e["userId"].as_str().unwrap()).collect();
        assert_eq!(
            (b["count"].as_u64(), b["uniqueUsers"].as_u64()),
            (Some(of_hour.len() as u64), Some(users.len() as u64)),
            "{prefix}: {b}"
        );
    }

    // Weekly (2024-01-01 is a Monday) and monthly, over whole days and over times.
    for range in ["startDate=2024-01-01&endDate=2024-01-14", "startDate=2024-01-01T00:00:00Z&endDate=2024-01-14T23:59:59.999Z"] {
        let (_, weekly) = api_.get(&key_a, &format!("/api/v1/metrics?interval=weekly&{range}"));
        let weeks = weekly["buckets"].as_array().unwrap();
        assert_eq!(weeks.len(), 2, "{weekly}");
        for (w, b) in weeks.iter().enumerate() {
            let days: Vec<String> = (1 + 7 * w..=7 + 7 * w).map(|d| format!("2024-01-{d:02}")).collect();
            let of_week: Vec<&Value> =
                all.iter().filter(|e| days.iter().any(|d| e["timestamp"].as_str().unwrap().starts_with(d.as_str()))).collect();
            assert_eq!(b["count"], of_week.len(), "{range} week {w}: {b}");
            let users: BTreeSet<&str> = of_week.iter().map(|e| e["userId"].as_str().unwrap()).collect();
            assert_eq!(b["uniqueUsers"], users.len(), "{range} week {w}: {b}");
        }
        let (_, monthly) = api_.get(&key_a, &format!("/api/v1/metrics?interval=monthly&event=page_view&{range}"));
        let in_range: Vec<&Value> =
            all.iter().filter(|e| e["eventName"] == "page_view" && e["timestamp"].as_str().unwrap() < "2024-01-15").collect();
        let users: BTreeSet<&str> = in_range.iter().map(|e| e["userId"].as_str().unwrap()).collect();
        assert_eq!(
            monthly["buckets"],
            json!([{"start": "2024-01-01T00:00:00.000Z", "count": in_range.len(), "uniqueUsers": users.len()}]),
            "{range}"
        );
    }

    // One user's journey in time order, two pages.
    let mut mine: Vec<&Value> = all.iter().filter(|e| e["userId"] == "user7").collect();
    mine.sort_by_key(|e| e["timestamp"].as_str().unwrap().to_owned());
    let (status, page1) = api_.get(&key_a, "/api/v1/users/user7/journey?limit=20");
    assert_eq!(status, 200, "{page1}");
    let cursor = page1["nextCursor"].as_str().expect("a second page").to_owned();
    let (_, page2) = api_.get(&key_a, &format!("/api/v1/users/user7/journey?limit=20&cursor={cursor}"));
    assert!(page2["nextCursor"].is_null(), "{page2}");
    let got: Vec<Value> = page1["events"].as_array().unwrap().iter().chain(page2["events"].as_array().unwrap()).cloned().collect();
    assert_eq!(got.len(), mine.len());
    for (g, e) in got.iter().zip(&mine) {
        assert_eq!(g["timestamp"], e["timestamp"].as_str().unwrap().replace('Z', ".000Z"));
        assert_eq!(g["eventName"], e["eventName"]);
        assert_eq!(g["properties"], e["properties"]);
        assert_eq!(g["sessionId"], e["sessionId"]);
    }
    // The same journey over a range given as dates and as times, one page: the user's
    // events inside it, in time order, and none of the other users sharing its bucket.
    for (range, from, to) in [
        ("startDate=2024-01-02&endDate=2024-01-03", "2024-01-02", "2024-01-04"),
        ("startDate=2024-01-02T12:00:00Z&endDate=2024-01-04T05:59:59Z", "2024-01-02T12:00:00Z", "2024-01-04T06:00:00Z"),
    ] {
        let (status, page) = api_.get(&key_a, &format!("/api/v1/users/user7/journey?{range}"));
        assert_eq!(status, 200, "{page}");
        let inside: Vec<&&Value> = mine.iter().filter(|e| (from..to).contains(&e["timestamp"].as_str().unwrap())).collect();
        let got: Vec<String> = page["events"].as_array().unwrap().iter().map(|e| e["timestamp"].as_str().unwrap().to_owned()).collect();
        let want: Vec<String> = inside.iter().map(|e| e["timestamp"].as_str().unwrap().replace('Z', ".000Z")).collect();
        assert!(!want.is_empty(), "{range}: the test's data has events of user7 inside the range");
        assert_eq!(got, want, "{range}");
        assert!(page["nextCursor"].is_null(), "{page}");
    }
    let (_, theirs) = api_.get(&key_b, "/api/v1/users/user20/journey");
    assert_eq!(theirs["events"], json!([]), "another tenant's user is not visible: {theirs}");
    drop(api_.weir);
}

#[test]
fn two_instances_on_one_database_roll_up_every_event_once() {
    let api_ = Api::start();
    let (_, key) = api_.key("shared", "org-m", "proj-m", json!({}));
    // A second instance of the example on the same tables, as a deployment behind a load balancer.
    let listen = format!("127.0.0.1:{}", free_port());
    let _second = Api::run(&api_._schema.0, &listen, &[]);
    let second = format!("http://{listen}");
    // The same users write through both at once, so both drains meet new users together.
    let all = events(40, 50);
    let (even, odd): (Vec<(usize, &Value)>, Vec<(usize, &Value)>) = all.iter().enumerate().partition(|(i, _)| (i / 100) % 2 == 0);
    std::thread::scope(|s| {
        for (base, part) in [(api_.base.clone(), even), (second.clone(), odd)] {
            let key = key.clone();
            s.spawn(move || {
                let events: Vec<Value> = part.into_iter().map(|(_, e)| e.clone()).collect();
                for chunk in events.chunks(100) {
                    let (status, _, body) =
                        api("POST", &format!("{base}/api/v1/events"), &[("X-API-Key", &key)], Some(&Value::Array(chunk.to_vec())));
                    assert_eq!((status, body["accepted"].as_u64()), (200, Some(chunk.len() as u64)), "{body}");
                }
            });
        }
    });
    let users: BTreeSet<&str> = all.iter().map(|e| e["userId"].as_str().unwrap()).collect();
    for base in [&api_.base, &second] {
        let (status, _, summary) =
            api("GET", &format!("{base}/api/v1/events/summary?startDate=2024-01-01&endDate=2024-01-31"), &[("X-API-Key", &key)], None);
        assert_eq!(status, 200, "{summary}");
        assert_eq!(
            (summary["totalEvents"].as_u64(), summary["uniqueUsers"].as_u64()),
            (Some(all.len() as u64), Some(users.len() as u64)),
            "{summary}"
        );
        let (_, _, daily) = api(
            "GET",
            &format!("{base}/api/v1/metrics?interval=daily&startDate=2024-01-01&endDate=2024-01-05"),
            &[("X-API-Key", &key)],
            None,
        );
        for (d, b) in daily["buckets"].as_array().unwrap().iter().enumerate() {
            let day = format!("2024-01-{:02}", d + 1);
            let of_day: BTreeSet<&str> =
                all.iter().filter(|e| e["timestamp"].as_str().unwrap().starts_with(&day)).map(|e| e["userId"].as_str().unwrap()).collect();
            assert_eq!(b["uniqueUsers"], of_day.len(), "{day}: {b}");
        }
    }
    let numbered =
        psql(SERVER, &format!("SELECT count(*), count(DISTINCT uid) FROM {}.rollup_users WHERE org_id = 'org-m'", api_._schema.0));
    assert_eq!(numbered, format!("{0}|{0}", users.len()), "each user numbered once, whichever instance met them first");
}

#[test]
fn missing_unknown_revoked_and_limited_keys_are_refused_with_the_status_and_headers_the_contract_names() {
    let api_ = Api::start();
    let summary = "/api/v1/events/summary";
    assert_eq!(api_.get("", summary).0, 401, "no key");
    assert_eq!(api_.get("wk_not-a-key", summary).0, 401, "unknown key");
    let (writer_id, writer) = api_.key("ingest only", "org-a", "proj-a", json!({"permissions": ["events:write"]}));
    let (status, body) = api_.get(&writer, summary);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("analytics:read"), "{body}");
    let (status, body) = api_.get(&writer, "/api/v1/metrics?interval=yearly");
    assert_eq!(status, 403, "permission before parameters: {body}");
    let (_, reader) = api_.key("dashboard", "org-a", "proj-a", json!({"rateLimit": {"max": 3, "windowMs": 60000}}));
    let (status, body) = api_.get(&reader, "/api/v1/metrics?interval=yearly");
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("interval"), "422 names the parameter: {body}");
    let (status, head, _) = api("GET", &api_.url("/api/v1/events/summary?startDate=01/02/2024"), &[("X-API-Key", &reader)], None);
    assert_eq!(status, 422);
    assert!(head.contains("ratelimit-remaining: 1"), "{head}");
    assert_eq!(api_.get(&reader, summary).0, 200);
    let (status, head, body) = api("GET", &api_.url(summary), &[("X-API-Key", &reader)], None);
    assert_eq!(status, 429, "{body}");
    assert!(head.contains("retry-after: "), "{head}");
    assert!(head.contains("ratelimit-limit: 3") && head.contains("ratelimit-remaining: 0"), "{head}");
    // Revoked: refused at once.
    let (status, _, _) = api("DELETE", &api_.url(&format!("/api/v1/keys/{writer_id}")), &[("X-Admin-Key", ADMIN)], None);
    assert_eq!(status, 200);
    let (status, body) = api_.post_events(&writer, &json!({"userId": "u", "eventName": "e"}));
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = api("DELETE", &api_.url(&format!("/api/v1/keys/{writer_id}")), &[("X-Admin-Key", ADMIN)], None);
    assert_eq!(status, 404, "already revoked");
    assert!(!api_.weir.logs().contains(&reader), "secrets never reach the log");
}

/// Seconds between two UTC times written `YYYY-MM-DDTHH:MM:SSZ`.
fn secs(a: &str, b: &str) -> f64 {
    fn epoch(s: &str) -> i64 {
        let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
        let (y, m, d) = (n(0..4), n(5..7), n(8..10));
        // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
        let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + d - 1;
        let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
        days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
    }
    (epoch(b) - epoch(a)) as f64
}

/// The median as PostgreSQL's `percentile_cont(0.5)` has it.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// A funnel's users and times to convert per step, counted here event by event: entry at
/// each user's first step-1 event in `[start, end)`, then each step's first event strictly
/// after the step before, within `window` seconds of the entry and the step's own window.
fn reference_funnel(all: &[Value], steps: &[Value], start: &str, end: &str, window: f64) -> Vec<(usize, Vec<f64>)> {
    let matches = |e: &Value, step: &Value| {
        e["eventName"] == step["eventName"] && step["filters"].as_object().is_none_or(|f| f.iter().all(|(k, v)| e["properties"][k] == *v))
    };
    let mut per_step: Vec<(usize, Vec<f64>)> = vec![(0, Vec::new()); steps.len()];
    let users: BTreeSet<&str> = all.iter().map(|e| e["userId"].as_str().unwrap()).collect();
    for user in users {
        let mut mine: Vec<&Value> = all.iter().filter(|e| e["userId"] == user).collect();
        mine.sort_by_key(|e| e["timestamp"].as_str().unwrap().to_owned());
        let time = |e: &Value| e["timestamp"].as_str().unwrap().to_owned();
        let Some(entry) = mine.iter().find(|e| matches(e, &steps[0]) && time(e).as_str() >= start && time(e).as_str() < end) else {
            continue;
        };
        let t0 = time(entry);
        per_step[0].0 += 1;
        let mut prev = t0.clone();
        for (k, step) in steps.iter().enumerate().skip(1) {
            let found = mine.iter().map(|e| (e, time(e))).find(|(e, t)| {
                matches(e, step) && *t > prev && secs(&t0, t) <= window && step["timeWindow"].as_f64().is_none_or(|w| secs(&prev, t) <= w)
            });
            let Some((_, t)) = found else { break };
            per_step[k].0 += 1;
            per_step[k].1.push(secs(&prev, &t));
            prev = t;
        }
    }
    per_step
}

/// Retention counted here: each user's first `cohort` event ever decides their cohort day;
/// `retained[k]` counts the cohort's users with any event on day k after (or on day k or later).
fn reference_retention(
    all: &[Value],
    cohort: &str,
    days: usize,
    start: &str,
    end: &str,
    on_or_after: bool,
) -> BTreeMap<String, (usize, Vec<usize>)> {
    let mut out = BTreeMap::new();
    let day = |e: &Value| e["timestamp"].as_str().unwrap()[..10].to_owned();
    let users: BTreeSet<&str> = all.iter().map(|e| e["userId"].as_str().unwrap()).collect();
    let day_number = |d: &str| secs("2024-01-01T00:00:00Z", &format!("{d}T00:00:00Z")) as i64 / 86_400;
    for user in users {
        let mine: Vec<&Value> = all.iter().filter(|e| e["userId"] == user).collect();
        let Some(first) = mine.iter().filter(|e| e["eventName"] == cohort).map(|e| e["timestamp"].as_str().unwrap()).min() else {
            continue;
        };
        if !(first >= start && first < end) {
            continue;
        }
        let cohort_day = first[..10].to_owned();
        let entry = out.entry(cohort_day.clone()).or_insert((0, vec![0; days + 1]));
        entry.0 += 1;
        let offsets: BTreeSet<i64> = mine.iter().map(|e| day_number(&day(e)) - day_number(&cohort_day)).filter(|k| *k >= 0).collect();
        for k in 0..=days as i64 {
            let back = if on_or_after { offsets.range(k..).next().is_some() } else { offsets.contains(&k) };
            if back {
                entry.1[k as usize] += 1;
            }
        }
    }
    out
}

#[test]
fn funnels_and_retention_answer_as_counted_event_by_event_and_survive_a_restart() {
    assert_eq!(secs("1970-01-01T00:00:00Z", "2024-01-01T00:00:00Z"), 1_704_067_200.0, "the reference's clock");
    let mut api_ = Api::start();
    let (_, key) = api_.key("analyst", "org-f", "proj-f", json!({}));
    let (_, other) = api_.key("other", "org-g", "proj-g", json!({}));
    let all = events(60, 25);
    for chunk in all.chunks(1000) {
        let (status, body) = api_.post_events(&key, &Value::Array(chunk.to_vec()));
        assert_eq!((status, body["accepted"].as_u64()), (200, Some(chunk.len() as u64)), "{body}");
    }

    // Stored funnels, per tenant.
    let steps = json!([
        {"eventName": "page_view"},
        {"eventName": "add_to_cart", "filters": {"plan": "free"}},
        {"eventName": "purchase", "timeWindow": 36000}
    ]);
    let (status, _, created) =
        api("POST", &api_.url("/api/v1/funnels"), &[("X-API-Key", &key)], Some(&json!({"name": "checkout", "steps": steps})));
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _, bad) =
        api("POST", &api_.url("/api/v1/funnels"), &[("X-API-Key", &key)], Some(&json!({"name": "x", "steps": [{"eventName": "a"}]})));
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().starts_with("steps"), "{bad}");
    assert_eq!(api_.get(&other, &format!("/api/v1/funnels/{id}")).0, 404, "another tenant's funnel is not found");
    assert_eq!(api_.get(&key, "/api/v1/funnels").1["funnels"].as_array().unwrap().len(), 1);

    // Users entering late (from 2024-01-02), later steps past endDate but inside the window.
    let check = |path: &str, steps: &Value, start: &str, end: &str, window: f64| {
        let (status, got) = api_.get(&key, path);
        assert_eq!(status, 200, "{got}");
        let expected = reference_funnel(&all, steps.as_array().unwrap(), start, end, window);
        let first = expected[0].0 as f64;
        assert!(expected[2].0 > 0, "the data makes someone convert: {expected:?}");
        for (k, (users, times)) in expected.iter().enumerate() {
            let step = &got["steps"][k];
            assert_eq!(step["users"], *users, "step {k}: {got}");
            let rate = if first == 0.0 { 0.0 } else { *users as f64 / first };
            assert!((step["conversionRate"].as_f64().unwrap() - rate).abs() < 1e-9, "step {k}: {step}");
            let before = if k == 0 { *users } else { expected[k - 1].0 };
            assert_eq!(step["dropOff"], before - users, "step {k}");
            if k > 0 {
                let avg = times.iter().sum::<f64>() / times.len() as f64;
                assert!((step["avgTimeToConvertSeconds"].as_f64().unwrap() - avg).abs() < 1e-6, "step {k}: {step} vs {avg}");
                assert!(
                    (step["medianTimeToConvertSeconds"].as_f64().unwrap() - median(times.clone()).unwrap()).abs() < 1e-6,
                    "step {k}: {step}"
                );
            }
        }
        let overall = expected[2].0 as f64 / first;
        assert!((got["overallConversionRate"].as_f64().unwrap() - overall).abs() < 1e-9, "{got}");
    };
    // A step with filters is counted over the events; steps without, over the rollups' events.
    let plain = json!([{"eventName": "page_view"}, {"eventName": "add_to_cart"}, {"eventName": "purchase", "timeWindow": 36000}]);
    let (status, _, created) =
        api("POST", &api_.url("/api/v1/funnels"), &[("X-API-Key", &key)], Some(&json!({"name": "plain", "steps": plain})));
    assert_eq!(status, 201, "{created}");
    let plain_id = created["id"].as_str().unwrap().to_owned();
    for (id, steps) in [(&id, &steps), (&plain_id, &plain)] {
        check(
            &format!("/api/v1/funnels/{id}/analytics?startDate=2024-01-02&endDate=2024-01-03"),
            steps,
            "2024-01-02",
            "2024-01-04",
            604_800.0,
        );
        check(
            &format!("/api/v1/funnels/{id}/analytics?startDate=2024-01-01&endDate=2024-01-05&windowSeconds=86400"),
            steps,
            "2024-01-01",
            "2024-01-06",
            86_400.0,
        );
        check(
            &format!("/api/v1/funnels/{id}/analytics?startDate=2024-01-01T06:00:00Z&endDate=2024-01-02T17:59:59.999Z"),
            steps,
            "2024-01-01T06:00:00Z",
            "2024-01-02T18:00:00Z",
            604_800.0,
        );
    }

    // Retention: cohorts by first signup, both modes, any return event.
    let ranges = ["startDate=2024-01-01&endDate=2024-01-03", "startDate=2024-01-01T00:00:00Z&endDate=2024-01-03T23:59:59.999Z"];
    for ((mode, on_or_after), range) in [("on", false), ("on_or_after", true)].into_iter().flat_map(|m| ranges.map(|r| (m, r))) {
        let (status, got) = api_.get(&key, &format!("/api/v1/retention?cohort=signup&days=4&{range}&mode={mode}"));
        assert_eq!(status, 200, "{got}");
        let expected = reference_retention(&all, "signup", 4, "2024-01-01", "2024-01-04", on_or_after);
        let cohorts = got["cohorts"].as_array().unwrap();
        assert_eq!(cohorts.len(), 3, "every day of the range: {got}");
        for c in cohorts {
            let (users, retained) = expected.get(c["date"].as_str().unwrap()).cloned().unwrap_or((0, vec![0; 5]));
            assert_eq!(c["users"], users, "{c}");
            assert_eq!(c["retained"], json!(retained), "{mode}: {c}");
        }
    }
    let (status, got) = api_.get(&key, "/api/v1/retention?days=3");
    assert_eq!(status, 422, "{got}");
    assert!(got["error"].as_str().unwrap().starts_with("cohort"), "{got}");

    // Keys, funnels and rollups are in PostgreSQL: a restarted weir has them.
    api_.restart();
    let (status, summary) = api_.get(&key, "/api/v1/events/summary?startDate=2024-01-01&endDate=2024-01-31");
    assert_eq!((status, summary["totalEvents"].as_u64()), (200, Some(all.len() as u64)), "{summary}");
    let (status, again) = api_.get(&key, &format!("/api/v1/funnels/{id}"));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["steps"], steps);
    let (status, _, gone) = api("DELETE", &api_.url(&format!("/api/v1/funnels/{id}")), &[("X-API-Key", &key)], None);
    assert_eq!(status, 200, "{gone}");
    assert_eq!(api_.get(&key, &format!("/api/v1/funnels/{id}")).0, 404);
}

#[test]
fn the_api_answers_as_its_openapi_document_says_and_serves_its_swagger_ui() {
    let api_ = Api::start();
    let (_, key) = api_.key("schemathesis", "org-s", "proj-s", json!({"rateLimit": {"max": 1_000_000, "windowMs": 60_000}}));
    let (status, body) = api_.post_events(&key, &Value::Array(events(5, 10)));
    assert_eq!(status, 200, "{body}");
    let (status, _, doc) = api("GET", &api_.url("/api-docs/openapi.json"), &[], None);
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let page = curl("GET", &api_.url("/api-docs"), None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/api-docs/swagger-ui-bundle.js"), "{}", page.body);
    let bundle = curl("GET", &api_.url("/api-docs/swagger-ui-bundle.js"), None, None);
    assert!(bundle.status == 200 && bundle.body.len() > 1_000_000, "the Swagger UI is built in, not fetched");
    // An independent client generates requests from the document and checks every answer
    // against it. Revoking keys is left out: it would revoke the key the run uses.
    let out = std::process::Command::new("schemathesis")
        .args(["run", &api_.url("/api-docs/openapi.json"), "--no-color", "--seed", "7", "--max-examples", "25"])
        .args(["-H", &format!("X-API-Key: {key}"), "-H", &format!("X-Admin-Key: {ADMIN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
        ])
        .args(["--exclude-path", "/api/v1/keys/{id}"])
        .output()
        .expect("schemathesis is installed (scripts/deps.sh)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found answers that break the document:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!api_.weir.logs().contains(&key), "secrets never reach the log");
}

#[test]
fn a_live_stream_carries_the_keys_project_events_as_they_are_stored() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let api_ = Api::start();
    let (_, key_a) = api_.key("live", "org-l", "proj-l", json!({}));
    let (_, key_b) = api_.key("other", "org-m", "proj-m", json!({}));
    let url = api_.url("/api/v1/events/live").replace("http://", "ws://");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut program = url.as_str().into_client_request().unwrap();
        program.headers_mut().insert("X-API-Key", key_a.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(program).await.expect("a WebSocket with the key in a header");
        let mut browser = url.as_str().into_client_request().unwrap();
        browser.headers_mut().insert("Sec-WebSocket-Protocol", format!("api-key, {key_a}").parse().unwrap());
        let (mut page, answer) = tokio_tungstenite::connect_async(browser).await.expect("a WebSocket with the key as a subprotocol");
        assert_eq!(answer.headers()["sec-websocket-protocol"], "api-key");
        let Err(refused) = tokio_tungstenite::connect_async(url.as_str()).await else { panic!("no key, no stream") };
        assert!(refused.to_string().contains("401"), "{refused}");

        // The other tenant's events first: a stream that leaked them would show them first.
        let (status, _) = api_.post_events(&key_b, &json!([{"userId": "u", "eventName": "theirs", "eventId": "b1"}]));
        assert_eq!(status, 200);
        let (status, _) = api_.post_events(
            &key_a,
            &json!([{"userId": "u1", "eventName": "mine", "eventId": "a1"}, {"userId": "u2", "eventName": "mine", "eventId": "a2"}]),
        );
        assert_eq!(status, 200);
        let (status, body) = api_.post_events(&key_a, &json!({"userId": "u1", "eventName": "mine", "eventId": "a1"}));
        assert_eq!((status, body["duplicates"].as_u64()), (200, Some(1)), "a duplicate is not stored, so not streamed: {body}");
        let (status, _) = api_.post_events(&key_a, &json!({"userId": "u3", "eventName": "last", "eventId": "a3"}));
        assert_eq!(status, 200);
        for stream in [&mut ws, &mut page] {
            let mut got = Vec::new();
            while got.len() < 3 {
                let msg = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
                    .await
                    .expect("an event in time")
                    .unwrap()
                    .unwrap();
                got.push(serde_json::from_str::<Value>(msg.to_text().unwrap()).unwrap());
            }
            let ids: Vec<&str> = got.iter().map(|e| e["eventId"].as_str().unwrap()).collect();
            assert_eq!(ids, ["a1", "a2", "a3"], "{got:?}");
            assert!(got.iter().all(|e| e["orgId"] == "org-l" && e["projectId"] == "proj-l"), "{got:?}");
        }
    });
}

#[test]
fn pages_of_other_origins_may_use_a_key_only_from_the_origins_it_allows() {
    let api_ = Api::start();
    // The page is served by Python's HTTP server on another port: another origin.
    let page = Page::serve("<html></html>");
    let html = format!(
        r#"<html><body><pre id="out">pending</pre><script>
async function go() {{
  const lines = [];
  for (const key of ["MINE", "ELSEWHERE"]) {{
    try {{
      const r = await fetch("{}/api/v1/events/summary", {{headers: {{"X-API-Key": key}}}});
      const j = await r.json();
      lines.push(r.status + " " + j.totalEvents);
    }} catch (e) {{ lines.push("blocked " + e.name); }}
  }}
  document.getElementById("out").textContent = "done\n" + lines.join("\n");
}}
go();
</script></body></html>"#,
        api_.base
    );
    let origin = page.origin.clone();
    let (_, mine) = api_.key("browser sdk", "org-c", "proj-c", json!({"allowedOrigins": [origin]}));
    let (_, elsewhere) = api_.key("other site", "org-c", "proj-c", json!({"allowedOrigins": ["https://app.example.com"]}));
    let (_, plain) = api_.key("server side", "org-c", "proj-c", json!({}));
    let (status, body) = api_.post_events(&mine, &json!([{"userId": "u1", "eventName": "page_view", "timestamp": "2024-01-02T10:00:00Z"}]));
    assert_eq!(status, 200, "{body}");

    // Preflights: for the origin a key lists, with what the page may send; not for others.
    let preflight = |from: &str| {
        let headers = [("Origin", from), ("Access-Control-Request-Method", "GET"), ("Access-Control-Request-Headers", "x-api-key")];
        api("OPTIONS", &api_.url("/api/v1/events/summary"), &headers, None)
    };
    let (status, head, _) = preflight(&origin);
    assert_eq!(status, 204, "{head}");
    assert!(head.contains(&format!("access-control-allow-origin: {origin}")), "{head}");
    assert!(head.contains("access-control-allow-headers: content-type, x-api-key"), "{head}");
    let (status, head, body) = preflight("https://evil.example");
    assert_eq!(status, 403, "{head}");
    assert!(body["error"].as_str().unwrap().contains("allowedOrigins"), "the refusal says what to do: {body}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");

    // Requests: each key only from its own origins; a page of the server itself is not cross-origin.
    let from = |key: &str, origin: &str| api("GET", &api_.url("/api/v1/events/summary"), &[("X-API-Key", key), ("Origin", origin)], None);
    let (status, head, body) = from(&mine, &origin);
    assert_eq!((status, body["totalEvents"].as_u64()), (200, Some(1)), "{body}");
    assert!(
        head.contains(&format!("access-control-allow-origin: {origin}"))
            && head.contains("access-control-expose-headers: retry-after, ratelimit-limit"),
        "{head}"
    );
    let (status, _, body) = from(&elsewhere, &origin);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("allowedOrigins"), "{body}");
    assert_eq!(from(&plain, &origin).0, 403, "a key without allowedOrigins, with no cors config, works from no other site");
    assert_eq!(from(&mine, "https://evil.example").0, 403);
    assert_eq!(from(&plain, &api_.base).0, 200, "the API's own pages (Swagger UI) are not cross-origin");

    // A real browser, which enforces CORS itself: the page reads the answer with its key,
    // and only the refusal with the key of another site.
    page.write(&html.replace("MINE", &mine).replace("ELSEWHERE", &elsewhere));
    let dom = render(&format!("{origin}/index.html"));
    assert!(dom.contains("done\n200 1\n403 undefined"), "{dom}");
}

#[test]
fn rate_limits_and_the_query_cache_live_in_redis_and_hold_across_a_restart() {
    let mut api_ = Api::start();
    let (limited_id, limited) = api_.key("dashboard", "org-r", "proj-r", json!({"rateLimit": {"max": 5, "windowMs": 600_000}}));
    let (_, writer) = api_.key("ingest", "org-r", "proj-r", json!({}));
    let (_, other) = api_.key("other tenant", "org-q", "proj-q", json!({}));
    let url = api_.url("/api/v1/events/summary");
    let summary = |key: &str| {
        let (status, head, body) = api("GET", &url, &[("X-API-Key", key)], None);
        let cache = head.lines().find_map(|l| l.strip_prefix("x-cache: ")).unwrap_or("").trim().to_owned();
        (status, cache, body["totalEvents"].as_u64())
    };
    let two = json!([{"userId": "u1", "eventName": "a", "eventId": "r1"}, {"userId": "u2", "eventName": "b", "eventId": "r2"}]);
    assert_eq!(api_.post_events(&writer, &two).0, 200);
    assert_eq!(summary(&limited), (200, "miss".into(), Some(2)));
    assert_eq!(summary(&writer), (200, "hit".into(), Some(2)), "the tenant's keys share its cached answers");
    assert_eq!(summary(&other), (200, "miss".into(), Some(0)), "another tenant never gets them");
    // A row stored outside the API is not seen while the answer is cached (at most the TTL)...
    psql(
        SERVER,
        &format!(
            "INSERT INTO {}.event_log (event_id, user_id, event_name, timestamp, org_id, project_id) VALUES ('r3', 'u3', 'c', now(), 'org-r', 'proj-r')",
            api_._schema.0
        ),
    );
    assert_eq!(summary(&limited), (200, "hit".into(), Some(2)));
    // ...and any event stored through the API retires the tenant's cached answers at once.
    assert_eq!(api_.post_events(&writer, &json!({"userId": "u4", "eventName": "d", "eventId": "r4"})).0, 200);
    assert_eq!(summary(&limited), (200, "miss".into(), Some(4)));
    // The key's window is in Redis (three requests so far), so it outlives this weir.
    let count = std::process::Command::new("redis-cli")
        .args(["GET", &format!("weir:{}:rate:{limited_id}", api_._schema.0)])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "3");
    api_.restart();
    assert_eq!(summary(&limited).0, 200);
    assert_eq!(summary(&limited).0, 200);
    let (status, head, body) = api("GET", &url, &[("X-API-Key", &limited)], None);
    assert_eq!(status, 429, "the sixth request in the window, two of them before the restart: {body}");
    assert!(head.contains("retry-after: ") && head.contains("ratelimit-remaining: 0"), "{head}");
}

#[test]
fn the_api_and_its_sink_reach_postgresql_over_tls_when_asked() {
    let app = format!("weir-analytics-tls-{}", free_port());
    let url = format!("{SERVER}?application_name={app}");
    let api_ = Api::start_with(&[("DATABASE_URL", &url), ("DATABASE_TLS", "require")]);
    let (_, key) = api_.key("tls", "org-t", "proj-t", json!({}));
    assert_eq!(api_.post_events(&key, &json!({"userId": "u", "eventName": "e", "eventId": "t1"})).0, 200);
    let (status, body) = api_.get(&key, "/api/v1/events/summary");
    assert_eq!((status, body["totalEvents"].as_u64()), (200, Some(1)), "{body}");
    // Every connection of this weir (the API's and the sink's), as the server sees them.
    let seen = psql(
        SERVER,
        &format!(
            "SELECT count(*) || ' ' || bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{app}'"
        ),
    );
    let (count, all_tls) = seen.trim().split_once(' ').unwrap();
    assert!(count.parse::<u32>().unwrap() >= 2, "the API's and the sink's connections: {seen}");
    assert_eq!(all_tls, "true", "every connection uses TLS: {seen}");
}

#[test]
fn a_projects_origins_let_its_keys_without_their_own_be_used_from_those_pages() {
    // The example with one line more: origins for project org-p/proj-p.
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo().join("examples/event-analytics/api.yaml")).unwrap();
    let variant = example.replacen(
        "    max_events: 1000\n",
        "    max_events: 1000\n    project_origins: {\"org-p/proj-p\": [\"https://shop.example\"]}\n",
        1,
    );
    assert_ne!(variant, example, "the example still has its max_events line");
    std::fs::write(dir.path().join("api.yaml"), variant).unwrap();
    let api_ = Api::start_from(dir.path(), &[]);
    let (_, shop) = api_.key("shop", "org-p", "proj-p", json!({}));
    let (_, own) = api_.key("own list", "org-p", "proj-p", json!({"allowedOrigins": ["https://admin.example"]}));
    let (_, other) = api_.key("other project", "org-q", "proj-q", json!({}));
    let from = |key: &str, origin: &str| api("GET", &api_.url("/api/v1/events/summary"), &[("X-API-Key", key), ("Origin", origin)], None);
    let (status, head, _) = from(&shop, "https://shop.example");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("access-control-allow-origin: https://shop.example"), "{head}");
    let (status, _, body) = from(&shop, "https://other.example");
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("project_origins"), "{body}");
    assert_eq!(from(&other, "https://shop.example").0, 403, "another project's key is not covered by this project's origins");
    assert_eq!(from(&own, "https://shop.example").0, 403, "a key's own list replaces its project's");
    assert_eq!(from(&own, "https://admin.example").0, 200);
    let headers =
        [("Origin", "https://shop.example"), ("Access-Control-Request-Method", "GET"), ("Access-Control-Request-Headers", "x-api-key")];
    assert_eq!(api("OPTIONS", &api_.url("/api/v1/events/summary"), &headers, None).0, 204);
}

#[test]
fn a_transaction_still_writing_events_holds_no_query_up_and_counts_once_committed() {
    use std::io::{BufRead, BufReader, Write};
    // No query cache: events written with SQL are to be seen at once.
    let api_ = Api::start_with(&[("ANALYTICS_CACHE_TTL", "0")]);
    let (_, key) = api_.key("writer", "org-w", "proj-w", json!({}));
    let stored = events(10, 5);
    assert_eq!(api_.post_events(&key, &Value::Array(stored.clone())).0, 200);
    // Another writer of the events table (a bulk load, say) inserts and keeps its
    // transaction open: the trigger has queued its rows, uncommitted.
    let schema = &api_._schema.0;
    let mut load = std::process::Command::new("psql")
        .args([SERVER, "-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    let mut to_load = load.stdin.take().unwrap();
    writeln!(
        to_load,
        "BEGIN; INSERT INTO {schema}.event_log (event_id, user_id, event_name, timestamp, org_id, project_id)
           SELECT 'bulk-' || i, 'bulk-user' || i, 'signup', '2024-01-02T10:00:00Z', 'org-w', 'proj-w' FROM generate_series(1, 7) i;
         \\echo inserted"
    )
    .unwrap();
    let mut from_load = BufReader::new(load.stdout.take().unwrap());
    let mut line = String::new();
    from_load.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "inserted");
    // A query rolls up what is committed without waiting for that transaction.
    let summary = "/api/v1/events/summary?startDate=2024-01-01&endDate=2024-01-31";
    let asked = std::time::Instant::now();
    let (status, body) = api_.get(&key, summary);
    assert_eq!((status, body["totalEvents"].as_u64()), (200, Some(stored.len() as u64)), "{body}");
    assert!(asked.elapsed() < std::time::Duration::from_secs(10), "the query waited {:?}", asked.elapsed());
    writeln!(to_load, "COMMIT;").unwrap();
    drop(to_load);
    assert!(load.wait().unwrap().success());
    // Committed: counted, once, however many drains come by.
    for _ in 0..3 {
        let (status, body) = api_.get(&key, summary);
        assert_eq!((status, body["totalEvents"].as_u64()), (200, Some(stored.len() as u64 + 7)), "{body}");
    }
    assert_eq!(psql(SERVER, &format!("SELECT count(*) FROM {schema}.rollup_queue")), "0", "the queue was drained");
}
