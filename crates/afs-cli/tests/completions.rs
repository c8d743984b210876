//! `afs completions` and `afs man` against the real binary: every shell gets a script that
//! names the commands, bash accepts its script, and man pages exist for every command.

use std::process::Command;

fn afs(args: &[&str]) -> std::process::Output {
    Command::new(assert_cmd::cargo::cargo_bin("afs"))
        .env_remove("AFS_DB")
        .env_remove("AFS_CONFIG")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_shell_gets_a_script_naming_the_commands() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = afs(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["import", "set-champion", "migrate", "db"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let out = afs(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn bash_loads_its_script_and_completes_commands() {
    if Command::new("bash").arg("--version").output().is_err() {
        eprintln!("skipping: no bash");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("afs.bash");
    std::fs::write(&script, afs(&["completions", "bash"]).stdout).unwrap();
    // Load the script, then ask its function what `afs im<TAB>` completes to.
    let probe = format!(
        "source {}; COMP_WORDS=(afs im); COMP_CWORD=1; COMP_LINE='afs im'; COMP_POINT=6; \
         _afs afs im afs; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let words = String::from_utf8(out.stdout).unwrap();
    assert!(words.lines().any(|w| w == "import"), "{words:?}");
}

#[test]
fn man_pages_are_written_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = afs(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for page in [
        "afs.1",
        "afs-import.1",
        "afs-ab-set-champion.1",
        "afs-loop-run.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let text = std::fs::read_to_string(dir.path().join("afs-ab-set-champion.1")).unwrap();
    assert!(
        text.contains("ab set\\-champion") || text.contains("ab set-champion"),
        "{text}"
    );
    // Without --out, afs.1 goes to stdout.
    let out = afs(&["man"]);
    assert!(String::from_utf8(out.stdout).unwrap().contains(".TH afs 1"));
}
