//! The import progress bar (drawn only on a terminal) counts what was imported as it goes:
//! run under `script`, which gives `afs import` a pseudo-terminal, the bar must show a
//! non-zero count of imported records before the end (it stayed at 0 for the whole run).

mod common;

use std::io::Write;

use common::{Env, NOW};

#[test]
fn the_progress_bar_counts_imported_records_while_importing() {
    let env = Env::new();
    let file = env.path("big.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for i in 0..60_000 {
        writeln!(
            out,
            r#"{{"query":"question {i}","response":"answer {i}","model":"m","timestamp":"2025-06-01T10:00:00Z"}}"#
        )
        .unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let afs = assert_cmd::cargo::cargo_bin("afs");
    let command = format!(
        "{} --db {} import --batch-size 1000 {}",
        afs.display(),
        env.db.display(),
        file.display()
    );
    let output = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("AFS_NOW", NOW)
        .env("TERM", "xterm-256color")
        .env_remove("AFS_DB")
        .env_remove("AFS_CONFIG")
        .current_dir(env.dir.path())
        .output()
        .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("imported 60000 records"), "{text}");
    let counts: Vec<u64> = text
        .match_indices(" imported, ")
        .filter_map(|(at, _)| {
            let before = &text[..at];
            let start = before
                .rfind(|c: char| !c.is_ascii_digit())
                .map_or(0, |i| i + 1);
            before[start..].parse().ok()
        })
        .collect();
    assert!(
        counts.iter().any(|&n| n > 0),
        "the bar never showed an imported record: {counts:?}"
    );
}
