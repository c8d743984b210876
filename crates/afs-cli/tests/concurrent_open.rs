//! Many `afs` processes started together on a database that does not exist yet: every one
//! must succeed (one creates and migrates the file, the others wait for it), round after
//! round, and every record must be there.

mod common;

use std::process::{Child, Stdio};

use common::{Env, NOW};

const PROCESSES: usize = 8;
const ROUNDS: usize = 12;

#[test]
fn processes_creating_one_new_database_together_all_succeed() {
    for round in 0..ROUNDS {
        let env = Env::new();
        let children: Vec<(usize, Child)> = (0..PROCESSES)
            .map(|p| {
                let query = format!("round {round} process {p}");
                let mut cmd = env.std_command_at(
                    NOW,
                    &["log", "--query", &query, "--response", "r", "--model", "m"],
                );
                cmd.stdout(Stdio::null()).stderr(Stdio::piped());
                (p, cmd.spawn().unwrap())
            })
            .collect();
        for (p, child) in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}, process {p} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let run = env.check(&["stats", "--json"], 0);
        assert_eq!(
            run.json()["total"],
            PROCESSES as u64,
            "round {round}: {}",
            run.stdout
        );
    }
}

/// A foreign SQLite file named by `--db` is refused by every command with a short message
/// and left byte for byte as it was.
#[test]
fn commands_refuse_another_applications_database_untouched() {
    let env = Env::new();
    // Another application's database, made with Python's standard library (CI installs
    // python3; the Python module's compatibility tests need it too).
    let made = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute('CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)'); \
             c.execute(\"INSERT INTO accounts (name) VALUES ('ada')\"); c.commit()",
        )
        .arg(&env.db)
        .status()
        .expect("python3 runs");
    assert!(made.success());
    let before = std::fs::read(&env.db).unwrap();
    for args in [
        &["stats"][..],
        &["log", "--query", "q", "--response", "r", "--model", "m"][..],
        &["records"][..],
    ] {
        let run = env.run(args);
        assert_ne!(run.code, 0, "{args:?} succeeded on a foreign database");
        assert!(
            run.stderr.contains("is not an afs database"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            run.stderr.len() < 600,
            "{args:?}: a short message: {}",
            run.stderr
        );
    }
    assert_eq!(std::fs::read(&env.db).unwrap(), before, "the file changed");
    let names: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["afs.db".to_string()],
        "files appeared beside it"
    );
}
