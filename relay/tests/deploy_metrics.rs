//! The Prometheus rules and the Grafana dashboard in `deploy/` against a live relay: every
//! metric a rule or a panel names is exported (already on a fresh relay, so alerts work
//! from the first scrape, and still after a real call), every label they use is one the
//! relay exports, and no label is per session, user or device.

use std::collections::BTreeSet;

use anyhow::Result;
use duet_proto::{ClientMessage, RelayMessage};
use duet_testkit::raw::assert_datagrams_flow;
use duet_testkit::{metric, scrape, Raw, TestRelay};

const RULES: &str = include_str!("../../deploy/prometheus/duet-relay.rules.yml");
const DASHBOARD: &str = include_str!("../../deploy/grafana/duet-relay-dashboard.json");

/// Labels that would make a series per session, per user or per device.
const FORBIDDEN_LABELS: &[&str] = &[
    "session",
    "session_id",
    "user",
    "user_id",
    "device",
    "device_id",
    "call",
    "connection",
    "conn",
];

/// Series Prometheus makes itself, and the target labels it adds to every series.
const FROM_PROMETHEUS: &[&str] = &["up"];
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Keywords that are not metric names (the grouping words are in `GROUPING`).
const PROMQL_WORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN",
];
/// Aggregations may be followed by `by (...)` instead of their `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

#[derive(Debug, Default)]
struct Refs {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Label names in a `(a, b)` grouping list or a `{a="x", b=~"y"}` matcher block starting at
/// `i` (on the opening bracket); returns the index after the closing one.
fn label_list(chars: &[char], mut i: usize, close: char, out: &mut BTreeSet<String>) -> usize {
    i += 1;
    let mut expect_name = true;
    while i < chars.len() && chars[i] != close {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(chars, i);
            continue;
        }
        if expect_name && (c.is_ascii_alphabetic() || c == '_') {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            out.insert(chars[start..i].iter().collect());
            expect_name = false;
            continue;
        }
        if c == ',' {
            expect_name = true;
        }
        i += 1;
    }
    i + 1
}

/// The metric names and label names a PromQL expression refers to. Grafana variables
/// (`$instance`, `$__rate_interval`) are skipped.
fn promql_refs(expr: &str, refs: &mut Refs) {
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = label_list(&chars, i, '}', &mut refs.labels),
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            '$' => {
                i += 1;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = chars.get(j) == Some(&'(');
                if GROUPING.contains(&word.as_str()) {
                    if call {
                        i = label_list(&chars, j, ')', &mut refs.labels);
                    }
                } else if !call
                    && !PROMQL_WORDS.contains(&word.as_str())
                    && !AGGREGATIONS.contains(&word.as_str())
                {
                    refs.metrics.insert(word);
                }
            }
            _ => i += 1,
        }
    }
}

/// `expr:` values of a Prometheus rule file (one-line or `|`/`>` block scalars) and its
/// `record:` names. The rule files are written in just these two styles.
fn rule_file(text: &str) -> (Vec<String>, BTreeSet<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let (mut exprs, mut records) = (Vec::new(), BTreeSet::new());
    let mut n = 0;
    while n < lines.len() {
        let line = lines[n];
        let body = line.trim_start().trim_start_matches("- ");
        let indent = line.len() - line.trim_start().len();
        n += 1;
        if let Some(name) = body.strip_prefix("record:") {
            records.insert(name.trim().to_owned());
        } else if let Some(value) = body.strip_prefix("expr:") {
            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                let mut block = String::new();
                while n < lines.len()
                    && (lines[n].trim().is_empty()
                        || lines[n].len() - lines[n].trim_start().len() > indent)
                {
                    block.push_str(lines[n]);
                    block.push('\n');
                    n += 1;
                }
                exprs.push(block);
            } else {
                exprs.push(value.trim_matches('\'').trim_matches('"').to_owned());
            }
        }
    }
    (exprs, records)
}

/// `{{ $labels.x }}` in annotations and `{{x}}` in legends: labels a template reads.
fn template_labels(text: &str, refs: &mut Refs) {
    for part in text.split("{{").skip(1) {
        let inner = part.split("}}").next().unwrap_or("").trim();
        let name = inner.strip_prefix("$labels.").unwrap_or(inner);
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            refs.labels.insert(name.to_owned());
        }
    }
}

fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>, legends: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("legendFormat", serde_json::Value::String(s)) => legends.push(s.clone()),
                    // A templating query: label_values(<selector>, <label>).
                    ("definition", serde_json::Value::String(s)) => {
                        let inner = s
                            .strip_prefix("label_values(")
                            .and_then(|s| s.strip_suffix(')'))
                            .unwrap_or(s);
                        let (sel, label) = inner.rsplit_once(',').unwrap_or((inner, ""));
                        out.push(sel.to_owned());
                        legends.push(format!("{{{{{}}}}}", label.trim()));
                    }
                    _ => dashboard_exprs(v, out, legends),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out, legends)),
        _ => {}
    }
}

/// Everything the rules and the dashboard refer to, and the recording rules they define.
fn deploy_refs() -> (Refs, BTreeSet<String>) {
    let mut refs = Refs::default();
    let (exprs, records) = rule_file(RULES);
    assert!(exprs.len() >= 20, "rule file parsed: {} exprs", exprs.len());
    template_labels(RULES, &mut refs);
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let (mut panel_exprs, mut legends) = (Vec::new(), Vec::new());
    dashboard_exprs(&dash, &mut panel_exprs, &mut legends);
    assert!(
        panel_exprs.len() >= 25,
        "dashboard parsed: {}",
        panel_exprs.len()
    );
    for e in exprs.iter().chain(&panel_exprs) {
        promql_refs(e, &mut refs);
    }
    for l in &legends {
        template_labels(l, &mut refs);
    }
    (refs, records)
}

/// Sample names and label names of a Prometheus text exposition.
fn exported(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut names, mut labels) = (BTreeSet::new(), BTreeSet::new());
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        names.insert(line[..end].to_owned());
        if line[end..].starts_with('{') {
            let chars: Vec<char> = line[end..].chars().collect();
            label_list(&chars, 0, '}', &mut labels);
        }
    }
    (names, labels)
}

fn assert_none<'a>(what: &str, found: impl Iterator<Item = &'a String>) {
    let found: Vec<&String> = found.collect();
    assert!(found.is_empty(), "{what}: {found:?}");
}

/// The checks, against one scrape.
fn check_against(text: &str, when: &str) {
    let (refs, records) = deploy_refs();
    let (names, labels) = exported(text);
    assert_none(
        &format!("{when}: named by a rule or panel but not exported"),
        refs.metrics.iter().filter(|m| {
            !m.contains(':') && !FROM_PROMETHEUS.contains(&m.as_str()) && !names.contains(*m)
        }),
    );
    assert_none(
        "recording rules used but not defined",
        refs.metrics
            .iter()
            .filter(|m| m.contains(':') && !records.contains(*m)),
    );
    assert_none(
        &format!("{when}: labels used by rules or panels that no exported series has"),
        refs.labels
            .iter()
            .filter(|l| !TARGET_LABELS.contains(&l.as_str()) && !labels.contains(*l)),
    );
    assert_none(
        "labels per session, user or device",
        refs.labels
            .iter()
            .chain(&labels)
            .filter(|l| FORBIDDEN_LABELS.contains(&l.as_str())),
    );
}

#[test]
fn the_reference_extractor_sees_metrics_labels_and_skips_the_rest() {
    let mut r = Refs::default();
    promql_refs(
        r#"histogram_quantile(0.99, sum by (job, le) (rate(duet_x_bucket{reason=~"a|b", instance=~"$instance"}[$__rate_interval])))
           / on (job) group_left clamp_min(duet_y, 1) and up offset 5m unless rec:z:rate5m > bool 1e3"#,
        &mut r,
    );
    let m: Vec<&str> = r.metrics.iter().map(String::as_str).collect();
    assert_eq!(m, ["duet_x_bucket", "duet_y", "rec:z:rate5m", "up"]);
    let l: Vec<&str> = r.labels.iter().map(String::as_str).collect();
    assert_eq!(l, ["instance", "job", "le", "reason"]);

    let (exprs, records) = rule_file(
        "  - record: a:b:c\n    expr: |\n      sum(x)\n      / y\n  - alert: A\n    expr: z > 1\n    for: 5m\n",
    );
    assert_eq!(exprs, ["      sum(x)\n      / y\n", "z > 1"]);
    assert!(records.contains("a:b:c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_in_the_rules_and_dashboard_is_exported() -> Result<()> {
    let relay = TestRelay::start().await;
    let metrics = || scrape(relay.ops_addr());

    // A fresh relay: nothing used yet, every series the alerts read already there.
    let fresh = metrics().await;
    check_against(&fresh, "fresh relay");
    assert_eq!(
        metric(&fresh, "duet_max_sessions"),
        f64::from(relay.config().limits.max_sessions)
    );
    assert_eq!(metric(&fresh, "duet_draining"), 0.0);
    assert!(metric(&fresh, "process_resident_memory_bytes") > 0.0);
    assert!(metric(&fresh, "process_open_fds") > 0.0);

    // One real call through it (two clients as the relay sees any): media both ways.
    let (mut a, _) = Raw::join(&relay, "deploy-metrics", "alice", "phone").await?;
    let (mut b, _) = Raw::join(&relay, "deploy-metrics", "bob", "laptop").await?;
    assert_eq!(a.next().await?, Some(RelayMessage::PeerJoined));
    assert_datagrams_flow(&a, &b).await?;
    let used = metrics().await;
    check_against(&used, "after a call");
    assert!(metric(&used, "duet_join_latency_seconds_count") >= 2.0);
    assert!(metric(&used, "duet_sessions") >= 1.0);
    assert!(metric(&used, "process_cpu_seconds_total") > 0.0);

    relay.drain();
    assert_eq!(metric(&metrics().await, "duet_draining"), 1.0);
    a.send_msg(&ClientMessage::Leave).await?;
    b.send_msg(&ClientMessage::Leave).await?;
    Ok(())
}
