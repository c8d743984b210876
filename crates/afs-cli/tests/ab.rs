//! `afs ab` end to end: the real binary on a real SQLite file, with the clock pinned by
//! AFS_NOW so that experiments of several days run in milliseconds.

mod common;

use afs_abtest::unit_position;
use common::{Env, Run};
use serde_json::{json, Value};

/// When the champion is registered and the challenger deployed.
const T0: &str = "2025-06-01T00:00:00Z";
/// Half a day later: too early for any promotion (the minimum is 48 h).
const T12H: &str = "2025-06-01T12:00:00Z";
/// Two and a half days later: past the minimum duration.
const T60H: &str = "2025-06-03T12:00:00Z";

/// How one arm behaves in [`traffic`].
struct Arm {
    model: &'static str,
    /// Quality scores, alternating from user to user.
    quality: [f64; 2],
    /// Latencies in ms, alternating from user to user.
    latency_ms: [f64; 2],
    /// Thumbs down for this many of every 20 requests (the others thumbs up).
    downs_per_20: usize,
}

/// `n` requests of `arm`, every one scored, timed and with feedback, spread evenly over the
/// 58 hours from T0 + 1 h, two from each of `n / 2` users of the arm's own: small, but
/// decisive with the default gates (100 requests, 50 units and 25 feedback events per arm,
/// 48 h).
fn traffic(arm: &Arm, n: usize) -> Vec<Value> {
    let start = chrono::DateTime::parse_from_rfc3339(T0).unwrap();
    (0..n)
        .map(|i| {
            let at = start
                + chrono::Duration::hours(1)
                + chrono::Duration::seconds((58 * 3600 * i / n) as i64);
            json!({
                "query": format!("question {i} for {}", arm.model),
                "response": format!("answer {i}"),
                "model": arm.model,
                "quality_score": arm.quality[(i / 2) % 2],
                "latency_ms": arm.latency_ms[(i / 2) % 2],
                "feedback": if i % 20 < arm.downs_per_20 { -1 } else { 1 },
                "unit": format!("{}-user-{}", arm.model, i / 2),
                "timestamp": at.to_rfc3339(),
            })
        })
        .collect()
}

const CHAMPION: Arm = Arm {
    model: "m1",
    quality: [0.6, 0.7],
    latency_ms: [200.0, 220.0],
    downs_per_20: 6,
};

const BETTER: Arm = Arm {
    model: "m2",
    quality: [0.8, 0.9],
    latency_ms: [190.0, 210.0],
    downs_per_20: 1,
};

const WORSE: Arm = Arm {
    model: "m2",
    quality: [0.4, 0.5],
    latency_ms: [260.0, 280.0],
    downs_per_20: 10,
};

/// A database with champion m1 and challenger m2 at weight 0.5 (routing seed 7), both
/// registered at T0.
fn experiment() -> Env {
    let env = Env::new();
    env.check_at(T0, &["ab", "set-champion", "m1", "--path", "/models/m1"], 0);
    env.check_at(
        T0,
        &[
            "ab",
            "deploy",
            "m2",
            "--path",
            "/models/m2",
            "--weight",
            "0.5",
            "--seed",
            "7",
        ],
        0,
    );
    env
}

/// `afs ab ARGS --json` at `now`, exit 0: its JSON.
fn ab_json(env: &Env, now: &str, args: &[&str]) -> Value {
    let mut full = vec!["ab"];
    full.extend_from_slice(args);
    full.push("--json");
    env.check_at(now, &full, 0).json()
}

/// The history as JSON lines, newest first.
fn history(env: &Env, now: &str, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["ab", "history", "--json"];
    full.extend_from_slice(args);
    env.check_at(now, &full, 0).json_lines()
}

/// `afs ab route --unit UNIT --json`: (model, arm).
fn route(env: &Env, unit: &str) -> (String, String) {
    let json = ab_json(env, T0, &["route", "--unit", unit]);
    assert_eq!(json["unit"], unit);
    (
        json["model"].as_str().unwrap().to_string(),
        json["arm"].as_str().unwrap().to_string(),
    )
}

/// The first unit `user-N` whose position for `seed` satisfies `wanted`.
fn unit_where(seed: u64, wanted: impl Fn(f64) -> bool) -> String {
    (0..10_000)
        .map(|i| format!("user-{i}"))
        .find(|u| wanted(unit_position(seed, u)))
        .expect("a unit in range")
}

fn check_stderr(run: &Run, expected: &[&str]) {
    for part in expected {
        assert!(run.stderr.contains(part), "stderr lacks {part:?}: {run:#?}");
    }
}

#[test]
fn deploy_route_set_weight_promote_and_history() {
    let env = Env::new();
    // set-champion creates the database.
    let champion = ab_json(
        &env,
        T0,
        &[
            "set-champion",
            "m1",
            "--path",
            "/models/m1",
            "--dataset",
            "base.jsonl",
        ],
    );
    assert_eq!(champion["champion"]["name"], "m1");
    assert_eq!(champion["champion"]["status"], "champion");
    assert_eq!(champion["champion"]["dataset"], "base.jsonl");
    assert_eq!(champion["retired"], Value::Null);

    // Without an experiment every request goes to the champion.
    assert_eq!(route(&env, "anyone"), ("m1".into(), "champion".into()));

    let deployed = ab_json(
        &env,
        T0,
        &[
            "deploy",
            "m2",
            "--path",
            "/models/m2",
            "--weight",
            "0.1",
            "--run-id",
            "run-42",
        ],
    );
    assert_eq!(deployed["experiment"]["challenger_weight"], 0.1);
    assert_eq!(deployed["experiment"]["status"], "running");
    assert_eq!(deployed["challenger"]["run_id"], "run-42");

    let status = ab_json(&env, T12H, &["status"]);
    assert_eq!(status["champion"]["name"], "m1");
    assert_eq!(status["challenger"]["name"], "m2");
    assert_eq!(status["challenger"]["model_path"], "/models/m2");
    let experiment = &status["experiment"];
    assert_eq!(experiment["challenger_weight"], 0.1);
    assert_eq!(experiment["started_at"], T0);
    assert_eq!(experiment["elapsed_hours"], 12.0);
    assert_eq!(experiment["periods"].as_array().unwrap().len(), 1);
    let seed = experiment["seed"].as_u64().unwrap();
    let text = env.check_at(T12H, &["ab", "status"], 0).stdout;
    for needle in [
        "champion:    m1",
        "challenger:  m2",
        "10% of traffic to the challenger",
        "(12.0 h)",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }

    // Sticky routing, as the library computes it: the challenger owns [0, w).
    let on_challenger = unit_where(seed, |p| p < 0.1);
    let moves_at_half = unit_where(seed, |p| (0.1..0.5).contains(&p));
    let stays_on_champion = unit_where(seed, |p| p >= 0.5);
    for _ in 0..2 {
        assert_eq!(
            route(&env, &on_challenger),
            ("m2".into(), "challenger".into())
        );
        assert_eq!(
            route(&env, &moves_at_half),
            ("m1".into(), "champion".into())
        );
        assert_eq!(
            route(&env, &stays_on_champion),
            ("m1".into(), "champion".into())
        );
    }
    let anonymous = ab_json(&env, T0, &["route"]);
    assert_eq!(anonymous["unit"], Value::Null);
    assert_eq!(anonymous["experiment_id"], experiment["id"]);
    assert!(["m1", "m2"].contains(&anonymous["model"].as_str().unwrap()));
    let text = env.check_at(T0, &["ab", "route", "--unit", &on_challenger], 0);
    assert_eq!(text.stdout, "m2 (challenger)\n");

    // Raising the weight keeps the seed: challenger units stay, some champion units move.
    let run = env.check_at(T12H, &["ab", "set-weight", "0.5"], 0);
    assert!(
        run.stdout.contains("now gets 50% of traffic (was 10%)"),
        "{run:#?}"
    );
    let status = ab_json(&env, T12H, &["status"]);
    assert_eq!(status["experiment"]["seed"].as_u64(), Some(seed));
    assert_eq!(status["experiment"]["challenger_weight"], 0.5);
    let periods = status["experiment"]["periods"].as_array().unwrap();
    assert_eq!(periods.len(), 2);
    assert_eq!(periods[0]["ended_at"], T12H);
    assert_eq!(periods[1]["source"], "manual");
    for _ in 0..2 {
        assert_eq!(
            route(&env, &on_challenger),
            ("m2".into(), "challenger".into())
        );
        assert_eq!(
            route(&env, &moves_at_half),
            ("m2".into(), "challenger".into())
        );
        assert_eq!(
            route(&env, &stays_on_champion),
            ("m1".into(), "champion".into())
        );
    }

    // A fresh experiment has no evidence: keep testing, and say why.
    let comparison = ab_json(&env, T12H, &["compare"]);
    assert_eq!(comparison["decision"], "keep_testing");
    assert!(
        comparison["reason"]
            .as_str()
            .unwrap()
            .contains("waiting for samples"),
        "{comparison}"
    );
    assert_eq!(comparison["metrics"][0]["metric"], "quality");
    assert_eq!(comparison["metrics"][0]["verdict"], "no_data");
    let text = env.check_at(T12H, &["ab", "compare"], 0).stdout;
    for needle in [
        "quality (primary metric; higher is better)",
        "latency_ms (guardrail, at most 10% worse; lower is better)",
        "decision: keep_testing",
        "reason:   waiting for samples",
        "sample ratio: no requests yet",
        "seed's rule, for contrast only",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }

    // A manual promotion, whatever the judge says.
    let promoted = ab_json(
        &env,
        T60H,
        &["promote", "--reason", "approved by the eval team"],
    );
    assert_eq!(promoted["champion"], "m2");
    assert_eq!(promoted["retired"], "m1");
    assert_eq!(promoted["experiment"]["status"], "promoted");
    let status = ab_json(&env, T60H, &["status"]);
    assert_eq!(status["champion"]["name"], "m2");
    assert_eq!(status["champion"]["traffic_weight"], 1.0);
    assert_eq!(status["challenger"], Value::Null);
    assert_eq!(status["experiment"], Value::Null);
    assert_eq!(status["last_experiment"]["status"], "promoted");
    assert_eq!(
        route(&env, &on_challenger),
        ("m2".into(), "champion".into())
    );

    // The history, newest first, with every reason.
    let events = history(&env, T60H, &[]);
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["promote", "set_weight", "deploy", "set_champion"]);
    let reason = |i: usize| events[i]["reason"].as_str().unwrap().to_string();
    assert!(reason(0).starts_with("approved by the eval team (the judge said: keep_testing"));
    assert_eq!(events[0]["model"], "m2");
    assert_eq!(events[0]["statistics"]["decision"], "keep_testing");
    assert_eq!(reason(1), "manual weight change by operator");
    assert_eq!(events[1]["weight"], 0.5);
    assert_eq!(reason(2), "manual deploy by operator");
    assert_eq!(reason(3), "manual set-champion by operator");
    assert_eq!(events[0]["at"], T60H);

    let only = history(&env, T60H, &["--kind", "promote", "--kind", "deploy"]);
    assert_eq!(only.len(), 2);
    assert_eq!(history(&env, T60H, &["--limit", "1"]).len(), 1);
    let text = env.check_at(T60H, &["ab", "history"], 0).stdout;
    assert!(text.starts_with("at "), "{text}");
    assert!(text.contains("manual set-champion by operator"), "{text}");
}

#[test]
fn rollback_retires_the_challenger_and_names_are_never_reused() {
    let env = experiment();
    let run = env.check_at(T12H, &["ab", "rollback"], 0);
    assert_eq!(
        run.stdout,
        "rolled back m2; m1 keeps all traffic (experiment 1)\n"
    );
    let status = ab_json(&env, T12H, &["status"]);
    assert_eq!(status["champion"]["name"], "m1");
    assert_eq!(status["champion"]["traffic_weight"], 1.0);
    assert_eq!(status["challenger"], Value::Null);
    assert_eq!(status["last_experiment"]["status"], "rolled_back");
    assert_eq!(status["last_experiment"]["ended_at"], T12H);
    let text = env.check_at(T12H, &["ab", "status"], 0).stdout;
    assert!(
        text.contains("last experiment: 1, m1 vs m2, challenger rolled back at"),
        "{text}"
    );
    assert_eq!(route(&env, "user-1"), ("m1".into(), "champion".into()));

    let events = history(&env, T12H, &[]);
    assert_eq!(events[0]["kind"], "rollback");
    assert_eq!(events[0]["model"], "m2");
    assert!(events[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("manual rollback by operator (the judge said: "));

    // Nothing left to roll back; a used name cannot come back; a new one can.
    let run = env.check_at(T12H, &["ab", "rollback"], 5);
    check_stderr(&run, &["no experiment is running"]);
    let run = env.check_at(T12H, &["ab", "deploy", "m2", "--path", "/models/m2"], 5);
    check_stderr(&run, &["m2"]);
    let deployed = ab_json(&env, T12H, &["deploy", "m3", "--path", "/models/m3"]);
    assert_eq!(deployed["experiment"]["id"], 2);
    // The default weight is initial_challenger_traffic.
    assert_eq!(deployed["experiment"]["challenger_weight"], 0.1);
}

#[test]
fn bad_input_and_state_are_refused_with_documented_exit_codes() {
    let env = Env::new();
    // No database yet: only set-champion creates one.
    let run = env.check(&["ab", "status"], 1);
    check_stderr(&run, &["does not exist"]);

    env.check(&["ab", "set-champion", "m1", "--path", "/models/m1"], 0);
    for args in [
        &["ab", "promote"][..],
        &["ab", "rollback"],
        &["ab", "set-weight", "0.5"],
        &["ab", "compare"],
    ] {
        let run = env.check(args, 5);
        check_stderr(&run, &["no experiment is running"]);
    }
    let run = env.check(&["--json", "ab", "promote"], 5);
    let error: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(
        error,
        json!({"error": "no experiment is running", "kind": "conflict"})
    );
    // `check` is for cron: no experiment is not an error.
    let check = ab_json(&env, common::NOW, &["check"]);
    assert_eq!(check["decision"], Value::Null);
    assert_eq!(check["comparison"], Value::Null);

    // Weights outside (0, 1): exit 3, naming the weight; nothing was deployed.
    for weight in ["1.5", "0", "1", "-0.2", "NaN"] {
        let run = env.check(
            &["ab", "deploy", "m2", "--path", "/m2", "--weight", weight],
            3,
        );
        check_stderr(&run, &["invalid weight", "(0, 1)"]);
    }
    assert_eq!(
        ab_json(&env, common::NOW, &["status"])["experiment"],
        Value::Null
    );
    env.check(
        &["ab", "deploy", "m2", "--path", "/m2", "--weight", "abc"],
        2,
    );
    env.check(&["ab", "deploy", "m2", "--path", "/m2"], 0);
    let run = env.check(&["ab", "set-weight", "2"], 3);
    check_stderr(&run, &["invalid weight: 2 is not within (0, 1)"]);
    env.check(&["ab", "set-weight", "-0.5"], 3);
    let run = env.check(&["ab", "promote", "--reason", " "], 3);
    check_stderr(&run, &["invalid --reason"]);
    // An experiment is already running.
    let run = env.check(&["ab", "deploy", "m3", "--path", "/m3"], 5);
    check_stderr(&run, &["already running"]);
    // The champion cannot be replaced under a running experiment.
    env.check(&["ab", "set-champion", "m4", "--path", "/m4"], 5);
    // Empty fields are refused by the store, naming the field.
    let run = env.check(&["ab", "promote"], 0);
    assert!(run.stdout.starts_with("promoted m2"), "{run:#?}");
    let run = env.check(&["ab", "deploy", "m5", "--path", ""], 3);
    check_stderr(&run, &["model_path"]);
    let run = env.check(&["ab", "history", "--experiment", "99"], 4);
    check_stderr(&run, &["99"]);

    // A database without a champion.
    let fresh = Env::new();
    fresh.import(&[common::line("q", "m1", json!({}))]);
    let run = fresh.check(&["ab", "deploy", "m2", "--path", "/m2"], 5);
    check_stderr(&run, &["no champion"]);
    let run = fresh.check(&["ab", "route"], 5);
    check_stderr(&run, &["no champion"]);
    assert_eq!(fresh.check(&["ab", "history"], 0).stdout, "no events\n");

    // An invalid [abtest] section stops every `afs ab` command, naming the key.
    fresh.write("afs.toml", "[abtest]\nalpha = 2\n");
    let run = fresh.check(&["ab", "status"], 3);
    check_stderr(&run, &["afs.toml", "abtest.alpha"]);
}

#[test]
fn check_promotes_a_clearly_better_challenger_after_the_minimum_duration() {
    let env = experiment();
    let mut lines = traffic(&CHAMPION, 150);
    lines.extend(traffic(&BETTER, 150));
    env.import_at(T60H, &lines);

    // Half a day in, the evidence is overwhelming but the minimum duration is not met.
    let early = ab_json(&env, T12H, &["check"]);
    assert_eq!(early["decision"], "keep_testing", "{early}");
    assert_eq!(early["applied"], Value::Null);
    assert!(early["reason"]
        .as_str()
        .unwrap()
        .contains("of the minimum 48 h"));
    let quality = &early["comparison"]["metrics"][0];
    assert_eq!(quality["verdict"], "better");

    let result = ab_json(&env, T60H, &["check"]);
    assert_eq!(result["decision"], "promote", "{result}");
    assert_eq!(result["applied"], "promote");
    let comparison = &result["comparison"];
    assert_eq!(
        comparison["requests"],
        json!({"champion": 150, "challenger": 150})
    );
    assert_eq!(comparison["srm"]["mismatch"], false);
    assert_eq!(comparison["seed"]["fixed_rule_promotes"], true);
    let verdicts: Vec<&str> = comparison["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["better", "within_margin", "within_margin"]);

    let status = ab_json(&env, T60H, &["status"]);
    assert_eq!(status["champion"]["name"], "m2");
    assert_eq!(status["last_experiment"]["status"], "promoted");
    let events = history(&env, T60H, &[]);
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["decision"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("promote", "promote"),
            ("decision", "promote"),
            ("decision", "keep_testing"),
            ("deploy", "-"),
            ("set_champion", "-"),
        ]
    );
    assert!(events[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("challenger m2 is better"));

    // Once promoted, a check has nothing to do.
    let run = env.check_at(T60H, &["ab", "check"], 0);
    assert_eq!(run.stdout, "no experiment is running; nothing to check\n");
}

#[test]
fn check_rolls_back_a_clearly_worse_challenger_without_waiting() {
    let env = experiment();
    let mut lines = traffic(&CHAMPION, 150);
    lines.extend(traffic(&WORSE, 150));
    env.import_at(T60H, &lines);

    // With automatic rollback off, the decision is recorded and nothing is applied.
    env.write("off.toml", "[abtest]\nenable_auto_rollback = false\n");
    let run = env.check_at(T12H, &["--config", "off.toml", "ab", "check"], 0);
    assert!(run.stdout.contains("decision: rollback"), "{run:#?}");
    assert!(
        run.stdout
            .contains("action:   none: automatic rollback is disabled"),
        "{run:#?}"
    );
    assert_eq!(ab_json(&env, T12H, &["status"])["challenger"]["name"], "m2");

    let result = ab_json(&env, T12H, &["check"]);
    assert_eq!(result["decision"], "rollback", "{result}");
    assert_eq!(result["applied"], "rollback");
    assert_eq!(result["comparison"]["metrics"][0]["verdict"], "worse");
    assert!(result["reason"].as_str().unwrap().contains("quality"));
    let status = ab_json(&env, T12H, &["status"]);
    assert_eq!(status["champion"]["name"], "m1");
    assert_eq!(status["challenger"], Value::Null);
    assert_eq!(status["last_experiment"]["status"], "rolled_back");
    let events = history(&env, T12H, &["--kind", "rollback"]);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["decision"], "rollback");
    let decisions = history(&env, T12H, &["--kind", "decision"]);
    assert_eq!(decisions.len(), 2);
    assert!(decisions[1]["reason"]
        .as_str()
        .unwrap()
        .ends_with("(not applied: automatic action is disabled)"));
}

#[test]
fn the_config_file_sets_the_experiment() {
    let env = Env::new();
    env.write(
        "afs.toml",
        "[abtest]\ninitial_challenger_traffic = 0.25\nmin_duration_hours = 72\n",
    );
    env.check_at(T0, &["ab", "set-champion", "m1", "--path", "/m1"], 0);
    let deployed = ab_json(&env, T0, &["deploy", "m2", "--path", "/m2"]);
    assert_eq!(deployed["experiment"]["challenger_weight"], 0.25);
    let mut lines = traffic(&CHAMPION, 300);
    lines.extend(traffic(&BETTER, 100));
    env.import_at(T60H, &lines);
    let result = ab_json(&env, T60H, &["check"]);
    assert_eq!(result["decision"], "keep_testing", "{result}");
    assert!(
        result["reason"]
            .as_str()
            .unwrap()
            .contains("of the minimum 72 h"),
        "{result}"
    );
}

#[test]
fn human_outputs() {
    let env = experiment();
    let mut lines = traffic(&CHAMPION, 150);
    lines.extend(traffic(&BETTER, 150));
    env.import_at(T60H, &lines);
    let text = |now: &str, args: &[&str]| {
        let mut full = vec!["ab"];
        full.extend_from_slice(args);
        let run = env.check_at(now, &full, 0);
        format!("$ afs {}\n{}", full.join(" "), run.stdout)
    };
    let outputs = [
        text(T12H, &["status"]),
        text(T12H, &["route", "--unit", "user-1"]),
        text(T60H, &["compare"]),
        text(T60H, &["check"]),
        text(T60H, &["status"]),
        text(T60H, &["history"]),
    ];
    insta::assert_snapshot!("outputs", outputs.join("\n"));
}

#[test]
fn records_without_unit_ids_are_analysed_per_request() {
    let env = experiment();
    let mut lines = traffic(&CHAMPION, 150);
    lines.extend(traffic(&BETTER, 150));
    for line in &mut lines {
        line.as_object_mut().unwrap().remove("unit");
    }
    env.import_at(T60H, &lines);
    let text = env.check_at(T60H, &["ab", "compare"], 0).stdout;
    for needle in [
        "traffic: 50% to the challenger; analysed per request: no record carries a unit id\n",
        "  champion m1: 150 requests, 150 feedback events\n",
        "  challenger m2: 150 requests, 150 feedback events\n",
        "  aggregation   per request\n",
        "sample ratio: requests: expected 50.0% to the challenger, observed 50.0% (150 vs 150; ",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    assert!(!text.contains("  units  "), "{text}");
    let json = ab_json(&env, T60H, &["compare"]);
    assert_eq!(json["analysis"], "no_unit_ids", "{json}");
}
