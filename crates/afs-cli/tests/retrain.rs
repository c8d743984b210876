//! `afs trigger check`, `afs retrain` and `afs runs` end to end: the real binary, a real
//! database, real trainer processes (small `sh` scripts).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{good_records, Env, NOW};
use serde_json::Value;

/// Trigger settings for tests: only the sample-count policy, at 3 new samples.
const SAMPLE_COUNT_ONLY: &str = "\
[trigger]
enable_scheduled = false
enable_quality_drop = false
min_new_samples = 3
";

/// Writes a trainer script and returns the command that runs it.
fn script(env: &Env, name: &str, body: &str) -> String {
    let path = env.write(name, &format!("#!/bin/sh\n{body}\n"));
    format!("sh {}", path.display())
}

/// A trainer that checks what it was given, writes a model and reports it on stdout.
fn good_trainer(env: &Env) -> String {
    script(
        env,
        "train.sh",
        r#"data="$1"; out="$2"
test -s "$data" || { echo "no data at $data" >&2; exit 9; }
test "$data" = "$AFS_DATA_PATH" || { echo "data path differs" >&2; exit 8; }
test "$out" = "$AFS_OUTPUT_DIR" || { echo "output dir differs" >&2; exit 7; }
lines=$(wc -l < "$data" | tr -d ' ')
test "$lines" = "$AFS_N_SAMPLES" || { echo "sample count differs" >&2; exit 6; }
echo "training on $lines samples"
echo weights > "$out/model.bin"
echo "{\"model_path\": \"$out/model.bin\", \"loss\": 0.25, \"run\": \"$AFS_RUN_ID\"}""#,
    ) + " {data} {output_dir}"
}

fn at(minute: u32) -> String {
    format!("2025-06-01T12:{minute:02}:00Z")
}

#[test]
fn trigger_check_reports_json_fields_and_follows_the_clock() {
    let env = Env::new();
    env.write("afs.toml", SAMPLE_COUNT_ONLY);
    env.import(&good_records(2, "first"));
    let run = env.check(&["trigger", "check", "--json"], 0);
    let result = run.json();
    let keys: Vec<&str> = result
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["metrics", "reason", "trigger_type", "triggered"]);
    assert_eq!(result["triggered"], false);
    assert_eq!(result["trigger_type"], Value::Null);
    assert_eq!(result["metrics"]["sample_count.new_samples"], 2.0);
    assert_eq!(result["metrics"]["sample_count.min_new_samples"], 3.0);
    // --exit-code: 10 when nothing is due, and no error message.
    let run = env.check(&["trigger", "check", "--exit-code"], 10);
    assert!(run.stderr.is_empty(), "{run:#?}");
    assert!(
        run.stdout.starts_with("not triggered\n  reason: "),
        "{run:#?}"
    );

    env.import(&good_records(2, "second"));
    let result = env
        .check(&["trigger", "check", "--json", "--exit-code"], 0)
        .json();
    assert_eq!(result["triggered"], true);
    assert_eq!(result["trigger_type"], "sample_count");
    assert!(result["reason"].as_str().unwrap().contains('4'), "{result}");
    let run = env.check(&["trigger", "check"], 0);
    assert!(
        run.stdout.starts_with("triggered (sample_count)\n"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("sample_count.new_samples"), "{run:#?}");

    let forced = env
        .check(&["trigger", "check", "--json", "--force"], 0)
        .json();
    assert_eq!(forced["trigger_type"], "manual");

    // The schedule, with the clock moved by AFS_NOW: the first check starts the interval.
    let env = Env::new();
    env.write(
        "afs.toml",
        "[trigger]\nenable_sample_count = false\nenable_quality_drop = false\n\
         schedule_interval_hours = 2\n",
    );
    env.import(&good_records(1, "x"));
    let check = |now: &str| env.check_at(now, &["trigger", "check", "--json"], 0).json();
    assert_eq!(check("2025-06-01T12:00:00Z")["triggered"], false);
    assert_eq!(check("2025-06-01T13:59:00Z")["triggered"], false);
    let due = check("2025-06-01T14:00:00Z");
    assert_eq!(due["triggered"], true, "{due}");
    assert_eq!(due["trigger_type"], "scheduled");
}

#[test]
fn retrain_runs_a_trainer_and_records_every_outcome() {
    let env = Env::new();
    env.write("afs.toml", SAMPLE_COUNT_ONLY);
    env.import(&good_records(5, "batch"));
    let out_dir = env.path("out");
    let out_dir = out_dir.to_str().unwrap();
    let retrain = |now: &str, cmd: &str, extra: &[&str], code: i32| {
        let mut args = vec![
            "retrain",
            "--json",
            "--output-dir",
            out_dir,
            "--min-samples",
            "1",
            "--train-cmd",
            cmd,
        ];
        args.extend_from_slice(extra);
        env.check_at(now, &args, code)
    };

    // 1. A trainer that succeeds.
    let run = retrain(&at(1), &good_trainer(&env), &[], 0);
    let outcome = run.json();
    assert_eq!(outcome["outcome"], "completed", "{run:#?}");
    assert_eq!(outcome["trigger"]["trigger_type"], "sample_count");
    let run_json = &outcome["run"];
    assert_eq!(run_json["status"], "completed");
    assert_eq!(run_json["n_samples"], 5);
    assert_eq!(outcome["dataset"]["final_count"], 5);
    let id = run_json["id"].as_str().unwrap().to_string();
    let model_path = run_json["model_path"].as_str().unwrap().to_string();
    assert!(model_path.ends_with("model/model.bin"), "{model_path}");
    assert!(Path::new(&model_path).exists());
    assert!(model_path.starts_with(out_dir), "{model_path}");
    assert_eq!(run_json["metrics"]["loss"], 0.25);
    assert_eq!(run_json["metrics"]["run"], id.as_str());
    let dataset = run_json["dataset_path"].as_str().unwrap();
    assert!(
        dataset.ends_with(&format!("runs/{id}/train.jsonl")),
        "{dataset}"
    );
    let stdout_log = Path::new(out_dir)
        .join("runs")
        .join(&id)
        .join("trainer.stdout.log");
    assert!(std::fs::read_to_string(stdout_log)
        .unwrap()
        .contains("training on 5 samples"));

    // Nothing new since, and in cooldown: not triggered, exit 0, no run.
    let outcome = retrain(&at(2), &good_trainer(&env), &[], 0).json();
    assert_eq!(outcome["outcome"], "not_triggered");
    assert_eq!(outcome["run"], Value::Null);

    // 2. A trainer that exits non-zero: exit 1, the run failed with the stderr tail.
    let failing = script(
        &env,
        "fail.sh",
        "echo 'loading data'\necho 'CUDA out of memory' >&2\nexit 3",
    );
    let run = retrain(&at(3), &failing, &["--force"], 1);
    let outcome = run.json();
    assert_eq!(outcome["outcome"], "failed");
    assert_eq!(outcome["run"]["status"], "failed");
    let error = outcome["run"]["error"].as_str().unwrap();
    assert!(
        error.contains("exit code 3") && error.contains("CUDA out of memory"),
        "{error}"
    );
    assert!(run.stderr.contains(r#"{"error":"retrain run "#), "{run:#?}");
    assert!(run.stderr.contains(r#""kind":"run_failed""#), "{run:#?}");
    assert!(run.stderr.contains("CUDA out of memory"), "{run:#?}");

    // 3. A trainer that hangs: stopped after --timeout, run timed_out, exit 1.
    let hanging = script(&env, "hang.sh", "sleep 30");
    let started = Instant::now();
    let run = retrain(&at(4), &hanging, &["--force", "--timeout", "1"], 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the trainer was not stopped"
    );
    let outcome = run.json();
    assert_eq!(outcome["run"]["status"], "timed_out", "{run:#?}");
    assert!(outcome["run"]["error"]
        .as_str()
        .unwrap()
        .contains("timed out"));

    // 4. A trainer that prints garbage: failed.
    let garbage = script(&env, "garbage.sh", "echo 'done!'");
    let outcome = retrain(&at(5), &garbage, &["--force"], 1).json();
    assert_eq!(outcome["run"]["status"], "failed");
    assert!(
        outcome["run"]["error"]
            .as_str()
            .unwrap()
            .contains("unusable"),
        "{outcome}"
    );

    // 5. Too few samples: refused, exit 1.
    let trainer = good_trainer(&env);
    let args = [
        "retrain",
        "--json",
        "--force",
        "--output-dir",
        out_dir,
        "--min-samples",
        "50",
        "--train-cmd",
        &trainer,
    ];
    let outcome = env.check_at(&at(6), &args, 1).json();
    assert_eq!(outcome["outcome"], "refused");
    assert!(outcome["run"]["error"]
        .as_str()
        .unwrap()
        .contains("min_samples_for_retrain"));

    // `afs runs` lists them newest first.
    let runs = env.check(&["runs", "--json"], 0).json_lines();
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["failed", "failed", "timed_out", "failed", "completed"]
    );
    let completed = &runs[4];
    assert_eq!(completed["id"], id.as_str());
    assert_eq!(completed["model_path"], model_path.as_str());
    assert_eq!(completed["trigger_type"], "sample_count");
    assert_eq!(completed["started_at"], at(1));
    assert_eq!(completed["duration_secs"], 0.0);
    assert!(completed["trigger_reason"].is_string());
    for key in [
        "finished_at",
        "n_samples",
        "error",
        "run_dir",
        "metrics",
        "dataset_path",
    ] {
        assert!(completed.get(key).is_some(), "{key} missing: {completed}");
    }
    assert_eq!(runs[0]["trigger_type"], "manual");

    let failed = env
        .check(&["runs", "--json", "--status", "failed", "--limit", "2"], 0)
        .json_lines();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|r| r["status"] == "failed"));
    let table = env.check(&["runs"], 0).stdout;
    let mut table_lines = table.lines();
    assert!(table_lines.next().unwrap().starts_with("id "), "{table}");
    assert_eq!(table_lines.count(), 5, "{table}");
    assert!(table.contains(&model_path), "{table}");
    assert!(table.contains("error: trainer timed out"), "{table}");
    env.check_err(&["runs", "--status", "lost"], 2, &["lost"]);
}

#[test]
fn the_trainer_command_and_settings_can_come_from_the_config_file() {
    let env = Env::new();
    let trainer = good_trainer(&env);
    env.write(
        "afs.toml",
        &format!(
            "{SAMPLE_COUNT_ONLY}\n[generator]\nformat = \"completion\"\n\n[retrain]\n\
             train_cmd = '{trainer}'\ntimeout_secs = 60\nmin_samples_for_retrain = 2\n\
             output_dir = \"cfg-out\"\ndataset_name = \"data.jsonl\"\n"
        ),
    );
    env.import(&good_records(4, "cfg"));
    let run = env.check(&["retrain"], 0);
    assert!(
        run.stdout.starts_with("retrain completed: run "),
        "{run:#?}"
    );
    assert!(run.stdout.contains("  dataset: cfg-out/runs/"), "{run:#?}");
    assert!(run.stdout.contains("data.jsonl (4 samples)"), "{run:#?}");
    assert!(run.stdout.contains("  model: cfg-out/runs/"), "{run:#?}");
    let runs = env.check(&["runs", "--json"], 0).json_lines();
    let dataset = env.path(runs[0]["dataset_path"].as_str().unwrap());
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(dataset)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(
        first.get("completion").is_some(),
        "the [generator] format is used: {first}"
    );

    // Flags override the file: too many samples needed now.
    let run = env.check(&["retrain", "--force", "--min-samples", "10"], 1);
    assert!(run.stdout.starts_with("retrain refused: run "), "{run:#?}");
}

#[test]
fn retrain_needs_a_trainer_command() {
    let env = Env::new();
    env.import(&good_records(1, "x"));
    env.check_err(&["retrain", "--force"], 2, &["--train-cmd", "train_cmd"]);
    env.check_err(
        &["retrain", "--force", "--train-cmd", " "],
        3,
        &["--train-cmd"],
    );
    env.check_err(
        &[
            "retrain",
            "--force",
            "--train-cmd",
            "true",
            "--timeout",
            "0",
        ],
        2,
        &["--timeout"],
    );
    // A rehearsal share without an existing file is refused before any run starts.
    env.write("afs.toml", "[generator]\nrehearsal_ratio = 0.5\n");
    env.check_err(
        &["retrain", "--force", "--train-cmd", "true"],
        3,
        &["generator.rehearsal_ratio in afs.toml"],
    );
    assert!(env.check(&["runs", "--json"], 0).stdout.is_empty());
}

/// Polls `afs runs` until a run is `running`, or panics after a while.
fn wait_for_running(env: &Env) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = env.check(&["runs", "--json"], 0).json_lines();
        if let Some(run) = runs.into_iter().find(|r| r["status"] == "running") {
            return run;
        }
        assert!(Instant::now() < deadline, "no run started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_retrain_at_a_time_and_a_dead_run_shows_as_failed() {
    let env = Env::new();
    env.import(&good_records(3, "busy"));
    // The trainer outlives nothing: it ends on its own shortly after the test is done.
    let slow = script(&env, "slow.sh", "sleep 4");
    let out_dir = env.path("out");
    let mut first = env.std_command_at(
        NOW,
        &[
            "retrain",
            "--force",
            "--min-samples",
            "1",
            "--output-dir",
            out_dir.to_str().unwrap(),
            "--train-cmd",
            &slow,
        ],
    );
    let mut child = first
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = wait_for_running(&env);

    // A second retrain while the first runs: busy, exit 5, nothing started.
    let run = env.check_err(
        &["retrain", "--json", "--force", "--train-cmd", "true"],
        5,
        &["another retrain is running"],
    );
    let json_error: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(json_error["kind"], "busy");
    assert_eq!(run.json()["outcome"], "already_running");

    // The owner dies mid-run: `afs runs` marks its run failed instead of running forever.
    child.kill().unwrap();
    child.wait().unwrap();
    let runs = env.check(&["runs", "--json"], 0).json_lines();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["id"], running["id"]);
    assert_eq!(runs[0]["status"], "failed", "{:?}", runs[0]);
    assert!(runs[0]["error"].is_string(), "{:?}", runs[0]);
}

#[test]
fn ctrl_c_stops_the_trainer_and_its_children_and_records_the_run_as_interrupted() {
    let env = Env::new();
    env.import(&good_records(3, "stop"));
    let marker = env.path("grandchild-survived");
    // The trainer starts a grandchild that would leave a mark 3 s later, then waits long.
    let long = script(
        &env,
        "long.sh",
        &format!("(sleep 3 && touch {}) &\nsleep 120", marker.display()),
    );
    let out_dir = env.path("out");
    let child = env
        .std_command_at(
            NOW,
            &[
                "retrain",
                "--json",
                "--force",
                "--min-samples",
                "1",
                "--output-dir",
                out_dir.to_str().unwrap(),
                "--train-cmd",
                &long,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = wait_for_running(&env);
    // What a terminal's Ctrl-C does to afs (the trainer is in its own process group).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stopping the trainer"), "{stderr}");
    let outcome: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(outcome["outcome"], "failed");
    let runs = env.check(&["runs", "--json"], 0).json_lines();
    assert_eq!(runs[0]["id"], running["id"]);
    assert_eq!(runs[0]["status"], "interrupted", "{:?}", runs[0]);
    std::thread::sleep(Duration::from_millis(3500));
    assert!(!marker.exists(), "the trainer's child outlived afs");
}
