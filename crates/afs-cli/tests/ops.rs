//! What ships for operators, checked against a live `afs serve`: `promtool check metrics` on
//! a scrape, `promtool check rules` on the alert rules and on every Grafana dashboard query,
//! and every metric they name exported by the scrape. promtool comes from Debian's
//! `prometheus` package (.ci/run installs it); without it the promtool checks are skipped,
//! except under CI.

mod serve_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serve_support::{workspace_root, Env};

/// promtool, or None (a failure under CI: there these checks may not be skipped).
fn promtool() -> Option<PathBuf> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(PathBuf::from("promtool"));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "promtool is missing under CI (.ci/run installs Debian's prometheus package)"
    );
    eprintln!("skipping the promtool checks: promtool is not installed");
    None
}

/// Runs promtool with `args`, `stdin` on its standard input; panics with its output on failure.
fn run_promtool(tool: &PathBuf, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `afs_*` name in `text`.
fn afs_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("afs_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn metrics_rules_and_dashboard_fit_prometheus_and_grafana() {
    let env = Env::new();
    // A database with everything the metrics describe: models, feedback, an experiment,
    // retrain runs and loop iterations.
    let demo = env
        .command(
            None,
            &[
                "demo",
                "--seed",
                "3",
                "--days",
                "3",
                "--requests-per-hour",
                "30",
            ],
        )
        .output()
        .unwrap();
    assert!(demo.status.success(), "{demo:?}");
    let server = env.serve(&[]);
    server.post("/v1/usage", &serve_support::record("q", "nayru-v1", ""));
    let scrape = server.get("/metrics").body;
    // The names of the samples, and of the families declared (a family whose samples are
    // absent now, e.g. the last decision before the first look, is still the contract).
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if !l.starts_with('#') && !l.is_empty() => l.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_string)
        .collect();
    for name in [
        "afs_model_records_total",
        "afs_model_quality_score_sum",
        "afs_loop_last_check_timestamp_seconds",
        "afs_retrain_runs_total",
    ] {
        assert!(exported.contains(name), "{name} is not exported:\n{scrape}");
    }

    // Every metric the rules and the dashboard name is exported.
    let root = workspace_root();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let dashboard_text =
        std::fs::read_to_string(root.join("deploy/grafana/afs-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(queries.len() >= 10, "{} queries", queries.len());
    let mut named = afs_names(&rules);
    for query in &queries {
        named.extend(afs_names(query));
    }
    for name in &named {
        assert!(
            exported.contains(name),
            "{name} is named by deploy/ but not exported by afs serve"
        );
    }

    let Some(tool) = promtool() else { return };
    run_promtool(&tool, &["check", "metrics"], Some(&scrape));
    run_promtool(
        &tool,
        &[
            "check",
            "rules",
            root.join("deploy/prometheus/alerts.yml").to_str().unwrap(),
        ],
        None,
    );
    // The dashboard's queries parse as PromQL: each becomes a recording rule for promtool
    // (Grafana's $__rate_interval replaced by a duration).
    let dir = tempfile::tempdir().unwrap();
    let mut as_rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        let expr = query.replace("$__rate_interval", "5m");
        as_rules.push_str(&format!(
            "      - record: afs_dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, as_rules).unwrap();
    run_promtool(&tool, &["check", "rules", path.to_str().unwrap()], None);
}
