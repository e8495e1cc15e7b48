//! The Prometheus alert rules and the Grafana dashboard in `deploy/`, checked with the tools
//! an operator loads them with, and against the real binary:
//!
//! - `deploy/prometheus/crier-alerts.yml`: `promtool check rules`, and `promtool test rules`
//!   on `crier-alerts.test.yml` (synthetic series that fire, and do not fire, several alerts);
//!   every alert has a `for:`, a severity, and annotations naming a README section that exists;
//! - `deploy/grafana/crier.json`: a Grafana dashboard model whose every query goes to the
//!   `datasource` variable and parses as PromQL (`promtool check rules` on them as recording
//!   rules);
//! - every `crier_*` metric either of them names is in the real binary's `/metrics`: the
//!   `crier_redis_*` ones with `--redis` against a real redis-server, the others without;
//! - a real Prometheus server scraping a real crier (with `--redis`) answers every panel's
//!   query with data, evaluates every rule without error, and has `CrierOnEpoll` pending (the
//!   crier runs on epoll), then `CrierRedisDown` when Redis is killed and `CrierDown` when
//!   crier stops.
//!
//! Needs promtool and prometheus (`apt-get install -y prometheus`), Python's PyYAML to read the rules
//! (`apt-get install -y python3-yaml`) and redis-server; scripts/test.sh installs them all.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RULES: &str = "deploy/prometheus/crier-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/crier-alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/crier.json";

fn repo(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

/// Fails (never skips) when `tool` is not on PATH, with the command that installs it.
fn need(tool: &str, install: &str) {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    assert!(found, "{tool} is not installed: {install} (scripts/test.sh installs it)");
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn promtool(args: &[&str]) -> String {
    need("promtool", "apt-get install -y prometheus");
    let out = run(Command::new("promtool").args(args).current_dir(ROOT));
    assert!(out.status.success(), "promtool {args:?} failed:\n{}", text(&out));
    text(&out)
}

/// The alert rules file, read by PyYAML (a YAML parser we did not write) into JSON.
fn rules() -> Value {
    need("python3", "apt-get install -y python3");
    let out = run(Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(repo(RULES)));
    assert!(
        out.status.success(),
        "reading {RULES} with PyYAML failed (if yaml is missing: apt-get install -y python3-yaml; \
         scripts/test.sh installs it):\n{}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("PyYAML's JSON")
}

/// Every rule of every group.
fn alerts(rules: &Value) -> Vec<&Value> {
    let groups = rules["groups"].as_array().expect("groups");
    groups.iter().flat_map(|g| g["rules"].as_array().expect("rules").iter()).collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).unwrap()).expect("the dashboard is JSON")
}

/// The `crier_*` metric names in `s`: every identifier that starts with `crier_`.
fn metric_names(s: &str, into: &mut BTreeSet<String>) {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut rest = s;
    while let Some(i) = rest.find("crier_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(ident) {
            into.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
}

/// The `crier_*` names in every string of a JSON document (queries, descriptions, …).
fn names_in(v: &Value, into: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => metric_names(s, into),
        Value::Array(a) => a.iter().for_each(|v| names_in(v, into)),
        Value::Object(o) => o.values().for_each(|v| names_in(v, into)),
        _ => {}
    }
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Metric families of a `/metrics` text, `name → type`, each with at least one sample.
fn families(text: &str) -> BTreeMap<String, String> {
    let samples: BTreeSet<String> = parse_metrics(text).into_iter().map(|s| s.name).collect();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            let sample = if kind == "histogram" { format!("{name}_count") } else { name.to_string() };
            assert!(samples.contains(&sample), "{name} has a TYPE line and no sample:\n{text}");
            out.insert(name.to_string(), kind.to_string());
        }
    }
    out
}

/// Whether `name` is a family of `fams`, or a histogram's `_bucket`, `_sum` or `_count` series.
fn exported(fams: &BTreeMap<String, String>, name: &str) -> bool {
    fams.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| fams.get(base).is_some_and(|k| k == "histogram"))
        })
}

#[test]
fn metric_names_finds_every_crier_identifier() {
    let mut got = BTreeSet::new();
    metric_names(
        r#"sum(rate(crier_a_total{x="crier_b"}[5m])) / crier_c:ratio + my_crier_d + crier_e_bucket; crier.js"#,
        &mut got,
    );
    let want: BTreeSet<String> =
        ["crier_a_total", "crier_b", "crier_c:ratio", "crier_e_bucket"].iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want);
    let fams = BTreeMap::from([("crier_h".to_string(), "histogram".to_string()), ("crier_g".into(), "gauge".into())]);
    assert!(exported(&fams, "crier_h_bucket") && exported(&fams, "crier_h_sum") && exported(&fams, "crier_g"));
    assert!(!exported(&fams, "crier_g_bucket") && !exported(&fams, "crier_x"));
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    let n = alerts(&rules()).len();
    assert!(checked.contains(&format!("SUCCESS: {n} rules found")), "{checked}");
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The unit tests exercise at least three alerts, firing and not firing.
    let tests = std::fs::read_to_string(repo(RULE_TESTS)).unwrap();
    let tested: BTreeSet<&str> = tests.lines().filter_map(|l| l.trim().strip_prefix("- alertname: ")).collect();
    assert!(tested.len() >= 3, "{tested:?}");
    assert!(tests.contains("exp_alerts: []"), "cases where an alert must not fire");
}

#[test]
fn every_alert_has_a_for_a_severity_and_says_what_to_do() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let headings: BTreeSet<&str> =
        readme.lines().filter(|l| l.starts_with('#')).map(|l| l.trim_start_matches('#').trim()).collect();
    let rules = rules();
    let mut names = BTreeSet::new();
    for rule in alerts(&rules) {
        let name = rule["alert"].as_str().unwrap_or_else(|| panic!("not an alert: {rule}"));
        assert!(names.insert(name), "{name} twice");
        let pending = rule["for"].as_str().unwrap_or_default();
        assert!(pending.ends_with('m') || pending.ends_with('s'), "{name}: for: {pending:?}");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning"].contains(&severity), "{name}: severity {severity:?}");
        let a = &rule["annotations"];
        for key in ["summary", "description"] {
            assert!(a[key].as_str().is_some_and(|s| s.len() > 20), "{name}: annotation {key}");
        }
        let section = a["readme"].as_str().unwrap_or_default();
        assert!(headings.contains(section), "{name}: readme {section:?} is no heading of README.md");
    }
    // The alerts the README lists, one per line of its table.
    for want in [
        "CrierDown",
        "CrierNearMaxConnections",
        "CrierSlowConsumerClosesRising",
        "CrierDeliveryLatencyHigh",
        "CrierPublishErrors",
        "CrierOnEpoll",
        "CrierRedisDown",
    ] {
        assert!(names.contains(want), "{want} missing from {RULES}");
    }
    for name in &names {
        assert!(readme.contains(&format!("| `{name}` |")), "{name} is not in README's alerts table");
    }
}

#[test]
fn dashboard_is_a_grafana_model_whose_queries_parse() {
    let d = dashboard();
    assert_eq!(d["uid"], "crier");
    assert!(d["title"].is_string() && d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus", "a Prometheus input for the import");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars.iter().find(|v| v["type"] == "datasource").expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    assert_eq!(ds["current"]["value"], "${DS_PROMETHEUS}", "the import's input picks the data source");
    let var_names: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();

    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("a title");
        assert!(ids.insert(p["id"].as_u64().expect("an id")), "{title}: id twice");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{title}: gridPos {g}");
        if p["type"] == "row" {
            continue;
        }
        assert!(["timeseries", "stat"].contains(&p["type"].as_str().unwrap()), "{title}: {}", p["type"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}: no query"));
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["refId"].is_string(), "{title}: refId");
            exprs.push((title.to_string(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());

    // Every query, with Grafana's variables as Grafana would fill them in, as a recording
    // rule: `promtool check rules` parses its PromQL.
    let dir = TempDir::new();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in exprs.iter().enumerate() {
        let filled = expr.replace("$__rate_interval", "1m").replace("$instance", ".*");
        if let Some(var) = filled.split('$').nth(1) {
            let v: String = var.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            panic!("{title}: ${v} is no variable this test fills in (variables: {var_names:?})");
        }
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&filled).unwrap()
        ));
    }
    let file = dir.join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let checked = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(checked.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{checked}");
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_in_the_real_metrics() {
    let mut rule_names = BTreeSet::new();
    names_in(&rules(), &mut rule_names);
    let mut dash_names = BTreeSet::new();
    names_in(&dashboard(), &mut dash_names);
    // Not vacuous: the figures the issue asks for are there.
    for want in [
        "crier_connections",
        "crier_max_connections",
        "crier_slow_consumer_closes_total",
        "crier_delivery_latency_seconds_bucket",
        "crier_publish_errors_total",
        "crier_driver",
        "crier_redis_up",
    ] {
        assert!(rule_names.contains(want), "the rules do not use {want}");
    }
    for want in [
        "crier_connections",
        "crier_connections_accepted_total",
        "crier_connections_refused_total",
        "crier_messages_published_total",
        "crier_frames_written_total",
        "crier_delivery_latency_seconds_bucket",
        "crier_slow_consumer_closes_total",
        "crier_bytes_written_total",
        "crier_driver",
        "crier_redis_up",
    ] {
        assert!(dash_names.contains(want), "the dashboard does not show {want}");
    }

    let plain = Server::start(Driver::Epoll);
    let plain_fams = families(&plain.metrics_text());
    let redis = Redis::start();
    let node = ServerBuilder::new(Driver::Epoll).args(["--redis", &redis.url()]).start();
    wait_until(READY_TIMEOUT, "crier_redis_up 1", || node.metric("crier_redis_up", &[]) == Some(1.0));
    let redis_fams = families(&node.metrics_text());

    let mut missing = Vec::new();
    for (file, names) in [(RULES, &rule_names), (DASHBOARD, &dash_names)] {
        for name in names {
            // crier_redis_* exist only with --redis; everything else also without it.
            let fams = if name.starts_with("crier_redis_") { &redis_fams } else { &plain_fams };
            if !exported(fams, name) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in crier's /metrics:\n{}", missing.join("\n"));
    assert!(!plain_fams.contains_key("crier_redis_up"), "crier_redis_* only with --redis");
}

/// A real Prometheus server (Debian's `prometheus`) on a free loopback port, stopped by PID.
struct Prometheus {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second as job `crier` and evaluates `rule_file` every second.
    fn start(target: std::net::SocketAddr, rule_file: &Path) -> Prometheus {
        need("prometheus", "apt-get install -y prometheus");
        let dir = TempDir::new();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: crier\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rule_file.display()
            ),
        )
        .unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, addr, _dir: dir };
        wait_until(READY_TIMEOUT, "prometheus /-/ready", || {
            http_get(p.addr, "/-/ready").is_ok_and(|r| r.status == 200)
        });
        p
    }

    /// GET `path` of the HTTP API: its `data`, after checking `status` is `success`.
    fn api(&self, path: &str) -> Value {
        let r = http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {r:?}"));
        assert_eq!(v["status"], "success", "GET {path}: {v}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let d = self.api(&format!("/api/v1/query?query={}", urlencode(expr)));
        d["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts, pending or firing, as `(name, state)`.
    fn alerts(&self) -> BTreeSet<(String, String)> {
        let d = self.api("/api/v1/alerts");
        let alerts = d["alerts"].as_array().cloned().unwrap_or_default();
        alerts
            .iter()
            .map(|a| (a["labels"]["alertname"].as_str().unwrap().into(), a["state"].as_str().unwrap().into()))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The dashboard's queries as Grafana sends them, with a rate window that holds several of
/// this test's one-second scrapes.
fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap().replace("$__rate_interval", "10s").replace("$instance", ".*");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

#[test]
fn a_real_prometheus_scraping_crier_answers_every_panel_and_evaluates_every_rule() {
    let redis = Redis::start();
    let node = ServerBuilder::new(Driver::Epoll).args(["--redis", &redis.url()]).start();
    wait_until(READY_TIMEOUT, "crier_redis_up 1", || node.metric("crier_redis_up", &[]) == Some(1.0));
    let _sub = node.ws("/ws?channels=board");
    node.wait_connections(1);
    let prom = Prometheus::start(node.admin_addr(), &repo(RULES));

    // Publish while Prometheus takes a few scrapes, so that every rate has samples.
    let mut publisher = node.publisher();
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        publisher.publish("board", b"{\"flight\":\"LH 400\"}", false);
        let scraped = prom.query("count_over_time(crier_messages_published_total[1m]) >= 5");
        if !scraped.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "Prometheus did not scrape crier 5 times");
        std::thread::sleep(std::time::Duration::from_millis(50)); // pacing, not a readiness wait
    }
    publisher.publish("board", b"{\"flight\":\"LH 401\"}", false);

    // The instance variable lists this crier.
    let instances = prom.api("/api/v1/label/instance/values?match[]=crier_connections");
    assert_eq!(instances, serde_json::json!([node.admin_addr().to_string()]));
    // Every panel's query runs; those without a `> 0` filter have data.
    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries() {
        let result = prom.query(&expr);
        if result.is_empty() && !expr.contains("> 0") {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "queries with no data from a live crier:\n{}", empty.join("\n"));
    assert!(!prom.query("sum(rate(crier_frames_written_total[10s])) > 0").is_empty(), "deliveries seen");

    // Every rule is evaluated without an error.
    let n = alerts(&rules()).len();
    wait_until(READY_TIMEOUT, "every rule evaluated", || {
        let d = prom.api("/api/v1/rules");
        let rules: Vec<Value> = d["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        for r in &rules {
            assert_ne!(r["health"], "err", "{}: {}", r["name"], r["lastError"]);
        }
        rules.len() == n && rules.iter().all(|r| r["health"] == "ok")
    });
    // This crier runs on epoll: CrierOnEpoll is pending (for: 15m); nothing else is.
    wait_until(READY_TIMEOUT, "CrierOnEpoll pending", || {
        prom.alerts().contains(&("CrierOnEpoll".into(), "pending".into()))
    });
    assert_eq!(prom.alerts().len(), 1, "{:?}", prom.alerts());
    // Redis goes away: CrierRedisDown is pending within a scrape and an evaluation.
    drop(redis);
    wait_until(READY_TIMEOUT, "CrierRedisDown pending", || {
        prom.alerts().contains(&("CrierRedisDown".into(), "pending".into()))
    });
    // crier stops: CrierDown is pending.
    drop(node);
    wait_until(READY_TIMEOUT, "CrierDown pending", || prom.alerts().contains(&("CrierDown".into(), "pending".into())));
}
