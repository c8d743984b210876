//! Every training format read by its consumers' own loading code: files written by the real
//! `afs generate` on a real database are loaded with Hugging Face `datasets` and TRL's data
//! utilities (tests/training_formats.py), and the example trainers' `--check-data` mode
//! (examples/trainers/) reads them as it would before training.
//!
//! The Python interpreter is `AFS_PYTHON` (CI's virtual environment from
//! .ci/python-requirements.txt), else `python3`. Without the modules the test fails when
//! `CI` is set and prints a notice otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{good_records, line, Env};
use serde_json::{json, Value};

/// The modules the checks import.
const MODULES: [&str; 4] = ["datasets", "jinja2", "transformers", "trl"];

/// The interpreter with the modules the checks need, or `None` (outside CI) without them.
fn python() -> Option<String> {
    let python = std::env::var("AFS_PYTHON").unwrap_or_else(|_| "python3".to_string());
    // Finding the modules is enough here (importing them takes seconds); the checks
    // themselves import them.
    let probe = format!(
        "import importlib.util, sys\n\
         missing = [m for m in {MODULES:?} if importlib.util.find_spec(m) is None]\n\
         print(' '.join(missing))\n\
         sys.exit(1 if missing else 0)"
    );
    let probe = Command::new(&python).args(["-c", &probe]).output();
    let missing = match &probe {
        Ok(o) if o.status.success() => return Some(python),
        Ok(o) => format!(
            "missing {}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => e.to_string(),
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "{python} lacks modules of the training-format checks and CI is set: they must \
             run (install .ci/python-requirements.txt and set AFS_PYTHON): {missing}"
        );
    }
    eprintln!("notice: {python} lacks the training-format checks' modules; skipping ({missing})");
    None
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `python ARGS` offline, with Hugging Face's caches under `hf_home` and compiled
/// modules under the target directory (not next to the sources in examples/); its exit
/// status, stdout and stderr.
fn run_python(python: &str, hf_home: &str, args: &[&str]) -> (bool, String, String) {
    let pycache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pycache");
    let output = Command::new(python)
        .args(args)
        .env("PYTHONPYCACHEPREFIX", pycache)
        .env("HF_HOME", hf_home)
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A log with thumbs-up records, queries with both a thumbs-up and a thumbs-down answer,
/// and Unicode.
fn fixture() -> Env {
    let env = Env::new();
    let mut lines = good_records(4, "plain");
    for i in 0..3 {
        let query = format!("How wide is register {i} of the 65816?");
        lines.push(json!({"query": query, "response": format!("Register {i} is 16 bits wide in native mode."),
            "model": "m1", "quality_score": 0.9, "feedback": 1, "timestamp": "2025-06-01T11:01:00Z"}));
        lines.push(json!({"query": query, "response": "It is always 8 bits.",
            "model": "m1", "quality_score": 0.3, "feedback": -1, "timestamp": "2025-06-01T11:02:00Z"}));
    }
    lines.push(line(
        "naïve café — 日本語 \"quoted\" and a line separator \u{2028} end",
        "m1",
        json!({"quality_score": 0.95, "feedback": 1, "timestamp": "2025-06-01T11:00:00Z"}),
    ));
    // Conversations: two liked ones (one with a system turn of its own), and one prompt
    // conversation answered once well and once badly.
    let chat = |system: Option<&str>, opening: &str, answer: &str| {
        let mut turns: Vec<Value> = system
            .map(|s| json!({"role": "system", "content": s}))
            .into_iter()
            .collect();
        turns.extend([
            json!({"role": "user", "content": opening}),
            json!({"role": "assistant", "content": "The 65816 is a 16-bit CPU."}),
            json!({"role": "user", "content": "Which machines used it?"}),
            json!({"role": "assistant", "content": answer}),
        ]);
        Value::Array(turns)
    };
    let liked = "The SNES and the Apple IIGS used the 65816.";
    for (i, (system, opening)) in [
        (Some("Be terse."), "What is the 65816?"),
        (None, "Tell me about the 65816."),
    ]
    .into_iter()
    .enumerate()
    {
        lines.push(
            json!({"model": "m1", "messages": chat(system, opening, liked), "quality_score": 0.9,
            "feedback": 1, "timestamp": format!("2025-06-01T11:1{i}:00Z")}),
        );
    }
    for (answer, feedback, quality) in [(liked, 1, 0.9), ("Only calculators.", -1, 0.2)] {
        lines.push(
            json!({"model": "m1", "messages": chat(None, "Explain the 65816 to me.", answer),
            "quality_score": quality, "feedback": feedback, "timestamp": "2025-06-01T11:20:00Z"}),
        );
    }
    env.import(&lines);
    env
}

/// The lines of a JSON Lines file.
fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An existing file of both shapes and several formats, to rehearse from.
const EXISTING: &str = concat!(
    r#"{"prompt":[{"role":"system","content":"old system"},{"role":"user","content":"old q1"}],"completion":[{"role":"assistant","content":"old a1"}]}"#,
    "\n",
    r#"{"prompt":"old q2\n\n","completion":"old a2"}"#,
    "\n",
    r#"{"messages":[{"role":"user","content":"old q3"},{"role":"assistant","content":"old a3"}]}"#,
    "\n",
    r#"{"prompt":"old q4","chosen":"old good","rejected":"old bad"}"#,
    "\n",
    r#"{"prompt":[{"role":"user","content":"old q5"}],"chosen":[{"role":"assistant","content":"old good 5"}],"rejected":[{"role":"assistant","content":"old bad 5"}]}"#,
    "\n",
    r#"{"prompt":"old q6","completion":"old bad 6","label":false}"#,
    "\n",
    r#"{"prompt":[{"role":"user","content":"old q7"}],"completion":[{"role":"assistant","content":"old good 7"}],"label":true}"#,
    "\n",
);

/// The example trainer that reads `format`, and one that refuses it.
fn trainers_of(format: &str) -> (Option<&'static str>, &'static str) {
    match format {
        "chatml" | "openai" | "sharegpt" | "completion" | "text" => (Some("sft"), "dpo"),
        "dpo" | "openai-dpo" => (Some("dpo"), "kto"),
        "kto" => (Some("kto"), "sft"),
        _ => (None, "sft"),
    }
}

#[test]
fn every_format_loads_with_its_consumers_code() {
    let Some(python) = python() else { return };
    let env = fixture();
    let existing = env.write("existing.jsonl", EXISTING);
    let mut specs = Vec::new();
    let mut generate = |format: &str, shape: &str, extra: &[&str]| {
        let name = format!("{format}-{shape}-{}.jsonl", specs.len());
        let out = env.path(&name);
        let mut args = vec![
            "generate",
            "--json",
            "--out",
            out.to_str().unwrap(),
            "--format",
            format,
        ];
        if matches!(format, "completion" | "dpo" | "kto") {
            args.extend(["--shape", shape]);
        }
        args.extend(extra);
        let result = env.check(&args, 0).json();
        assert!(
            result["final_count"].as_u64().unwrap() > 0,
            "{format}: {result}"
        );
        let (reader, refuser) = trainers_of(format);
        specs.push(json!({
            "path": out, "format": format, "shape": shape,
            "accepted_by": reader.into_iter().collect::<Vec<_>>(),
            "refused_by": {refuser: "trainer reads"},
        }));
        out
    };
    let with_system = ["--system-prompt", "Answer briefly."];
    let rehearse = [
        "--existing",
        existing.to_str().unwrap(),
        "--rehearsal",
        "0.5",
    ];
    let both: Vec<&str> = with_system.iter().chain(&rehearse).copied().collect();
    for format in ["chatml", "openai", "sharegpt"] {
        for extra in [&[][..], &with_system, &both] {
            generate(format, "conversational", extra);
        }
    }
    let text = generate("text", "plain", &both);
    generate("alpaca", "plain", &both);
    let mut last = Vec::new();
    for shape in ["plain", "conversational"] {
        for extra in [&[][..], &with_system, &rehearse, &both] {
            for format in ["completion", "dpo", "kto"] {
                last.push(generate(format, shape, extra));
            }
        }
    }
    for extra in [&[][..], &both] {
        generate("openai-dpo", "conversational", extra);
    }
    // The conversations are written whole; the conversation's own system turn stays.
    let openai = generate("openai", "conversational", &with_system);
    let long: Vec<Value> = json_lines(&openai)
        .into_iter()
        .filter(|l| l["messages"].as_array().unwrap().len() == 5)
        .collect();
    assert_eq!(long.len(), 3, "{long:?}");
    assert!(long
        .iter()
        .any(|l| l["messages"][0]["content"] == "Be terse."));
    assert!(long
        .iter()
        .any(|l| l["messages"][0]["content"] == "Answer briefly."));

    // The checks must catch a file that mixes shapes, as afs once wrote.
    let mixed = env.write(
        "mixed.jsonl",
        concat!(
            r#"{"prompt":"q","completion":"a"}"#,
            "\n",
            r#"{"prompt":[{"role":"user","content":"q"}],"completion":[{"role":"assistant","content":"a"}]}"#,
            "\n"
        ),
    );
    specs.push(json!({
        "path": mixed, "format": "completion", "shape": "plain", "bad": true,
        "refused_by": {"sft": "mixes plain and conversational"},
    }));

    let spec_path = env.write("specs.json", &Value::from(specs.clone()).to_string());
    let checker = repo().join("crates/afs-cli/tests/training_formats.py");
    let trainers = repo().join("examples/trainers");
    let hf_home = env.path("hf-home");
    let hf_home = hf_home.to_str().unwrap();
    let (ok, stdout, stderr) = run_python(
        &python,
        hf_home,
        &[
            checker.to_str().unwrap(),
            spec_path.to_str().unwrap(),
            trainers.to_str().unwrap(),
        ],
    );
    let reports: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect();
    assert_eq!(reports.len(), specs.len(), "{stdout}\n{stderr}");
    let (bad, good) = reports.split_last().unwrap();
    for (report, spec) in good.iter().zip(&specs) {
        assert_eq!(report["ok"], true, "{report}\n{stderr}");
        // Every format with message lists carries the conversations' both user turns.
        let lists = matches!(
            spec["format"].as_str(),
            Some("chatml" | "openai" | "sharegpt")
        ) || spec["shape"] == "conversational" && spec["format"] != "openai-dpo";
        if lists {
            assert_eq!(report["max_user_turns"], 2, "{report}");
        }
    }
    assert_eq!(bad["ok"], false, "the mixed file passed: {bad}");
    assert_eq!(bad["trainers_ok"], true, "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("typed Json"),
        "{bad}"
    );
    assert!(ok, "{stderr}");

    // The scripts compile, and their command line (`--check-data`) runs on afs's files.
    let scripts = ["trl_sft.py", "trl_dpo.py", "trl_kto.py"].map(|s| trainers.join(s));
    let mut compile = vec!["-m", "py_compile"];
    compile.extend(scripts.iter().map(|s| s.to_str().unwrap()));
    let (ok, _, stderr) = run_python(&python, hf_home, &compile);
    assert!(ok, "{stderr}");
    let conversational_dpo = &last[last.len() - 2];
    assert!(
        json_lines(conversational_dpo)
            .iter()
            .any(|l| l["prompt"].as_array().unwrap().len() == 4),
        "no conversation prompt in {conversational_dpo:?}"
    );
    for (script, file) in scripts
        .iter()
        .zip([&text, conversational_dpo, &last[last.len() - 1]])
    {
        let (ok, stdout, stderr) = run_python(
            &python,
            hf_home,
            &[
                script.to_str().unwrap(),
                "--check-data",
                "--data",
                file.to_str().unwrap(),
            ],
        );
        assert!(ok, "{script:?} {file:?}: {stderr}");
        let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
        assert_eq!(report["ok"], true, "{report}");
        assert!(report["rows"].as_u64().unwrap() > 0, "{report}");
    }

    // Training (not `--check-data`) refuses a KTO file with thumbs-up samples only, before
    // it imports TRL's trainer (which this environment cannot: no torch).
    let one_label = env.path("one-label.jsonl");
    let rows: String = (0..3)
        .map(|i| format!("{{\"prompt\":\"q{i}\",\"completion\":\"a{i}\",\"label\":true}}\n"))
        .collect();
    std::fs::write(&one_label, rows).unwrap();
    let model_dir = env.path("kto-model");
    let (ok, _, stderr) = run_python(
        &python,
        hf_home,
        &[
            scripts[2].to_str().unwrap(),
            "--data",
            one_label.to_str().unwrap(),
            "--output-dir",
            model_dir.to_str().unwrap(),
            "--model",
            "no-such-model",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("KTO needs thumbs-up and thumbs-down samples"),
        "{stderr}"
    );
}
