//! `cargo xtask`: the afs repository's automation (CI checks, layering, benchmarks).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use xtask::pg;

const HELP: &str = "\
cargo xtask: automation for the afs repository

Usage: cargo xtask <COMMAND> [ARGS...]

Commands:
  ci               Run every CI check in order, stopping at the first failure:
                     1. cargo fmt --all -- --check
                     2. cargo clippy --workspace --all-targets -- -D warnings
                     3. the layering check (see `layering`)
                     4. cargo test --workspace, with AFS_SLOW_TESTS=1 so slow suites run,
                        and a private throwaway PostgreSQL cluster (initdb in a temp dir,
                        a free loopback port; as root it runs as the `postgres` user) named
                        by AFS_TEST_PG_URL, stopped and deleted afterwards. An
                        AFS_TEST_PG_URL already set is used instead. Under CI (CI set) a
                        missing PostgreSQL fails the step; elsewhere its tests are skipped.
                   This is what .ci/run runs.
  layering         Check that afs crates depend only downward: every afs-* edge in
                   crates/*/Cargo.toml ([dependencies], [build-dependencies] and
                   [dev-dependencies]) must be allowed by the layer table in
                   xtask/src/layering.rs (see docs/ARCHITECTURE.md).
  bench [ARGS...]  Build afs-cli in release mode, then run the benchmark harness:
                   cargo run --release -p afs-bench -- ARGS...
  with-postgres COMMAND [ARGS...]
                   Start a throwaway PostgreSQL cluster (as `ci` does), run COMMAND with
                   AFS_TEST_PG_URL naming it, then stop and delete the cluster. E.g.
                   cargo xtask with-postgres cargo test -p afs-store-postgres
  help             Print this help (also -h, --help).

Exit status: 0 when the command succeeded, 1 when a step failed, 2 on a usage error.
";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(command) = args.next() else {
        eprint!("error: no command given\n\n{HELP}");
        return ExitCode::from(2);
    };
    let rest: Vec<OsString> = args.collect();
    let result = match command.to_str() {
        Some("ci") if rest.is_empty() => ci(),
        Some("layering") if rest.is_empty() => layering(),
        Some("bench") => bench(&rest),
        Some("with-postgres") => with_postgres(&rest),
        Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            Ok(())
        }
        Some("ci" | "layering") => {
            eprintln!(
                "error: `{}` takes no arguments\n\nRun `cargo xtask --help` for usage.",
                command.to_string_lossy()
            );
            return ExitCode::from(2);
        }
        _ => {
            eprintln!(
                "error: unknown command `{}`\n\nRun `cargo xtask --help` for usage.",
                command.to_string_lossy()
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask lives in `<root>/xtask`.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo that launched us (`cargo xtask` sets `CARGO`), so the same toolchain is used.
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root());
    command
}

/// Runs a command to completion, inheriting stdio, and fails if it exits non-zero.
fn run(mut command: Command) -> Result<()> {
    let shown = describe(&command);
    let status = command
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

fn describe(command: &Command) -> String {
    let mut parts: Vec<String> = command
        .get_envs()
        .filter_map(|(key, value)| {
            let value = value?;
            Some(format!(
                "{}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            ))
        })
        .collect();
    // Show `cargo`, not the absolute path in $CARGO.
    let program = Path::new(command.get_program())
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    parts.push(program);
    parts.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    parts.join(" ")
}

/// One step of `cargo xtask ci`.
type Step = fn() -> Result<()>;

fn ci() -> Result<()> {
    let start = Instant::now();
    let steps: [(&str, Step); 4] = [
        ("fmt", fmt_check),
        ("clippy", clippy),
        ("layering", layering),
        ("test", test),
    ];
    let n_steps = steps.len();
    for (i, (name, step)) in steps.into_iter().enumerate() {
        eprintln!("\n==> ci step {}/{n_steps}: {name}", i + 1);
        if let Err(err) = step() {
            eprintln!(
                "\n==> ci failed at step `{name}` after {}",
                format_duration(start.elapsed())
            );
            return Err(err.context(format!("ci step `{name}` failed")));
        }
    }
    eprintln!(
        "\n==> ci passed: {n_steps} steps in {}",
        format_duration(start.elapsed())
    );
    Ok(())
}

/// Starts the throwaway PostgreSQL cluster the tests use and points `command` at it; keeps
/// an `AFS_TEST_PG_URL` already set. Without PostgreSQL installed, fails under CI (where the
/// PostgreSQL suite may never be skipped) and warns elsewhere.
fn postgres_for_tests(command: &mut Command) -> Result<Option<pg::Cluster>> {
    if std::env::var(pg::URL_ENV).is_ok_and(|url| !url.trim().is_empty()) {
        eprintln!(
            "==> PostgreSQL tests use {} from the environment",
            pg::URL_ENV
        );
        return Ok(None);
    }
    let Some(bindir) = pg::find_bindir() else {
        if std::env::var_os("CI").is_some() {
            bail!(
                "PostgreSQL is not installed (no initdb on PATH, in {} or under \
                 /usr/lib/postgresql); .ci/run installs Debian's `postgresql`",
                pg::BINDIR_ENV
            );
        }
        eprintln!(
            "==> warning: PostgreSQL is not installed; its tests will be skipped \
             (install Debian's `postgresql` or set {})",
            pg::URL_ENV
        );
        return Ok(None);
    };
    let started = Instant::now();
    let cluster = pg::Cluster::start(&bindir, "ci", pg::TEST_SETTINGS).with_context(|| {
        format!(
            "cannot start a throwaway PostgreSQL from {}",
            bindir.display()
        )
    })?;
    eprintln!(
        "==> PostgreSQL tests use a throwaway cluster at {} (started in {})",
        cluster.url,
        format_duration(started.elapsed())
    );
    command.env(pg::URL_ENV, &cluster.url);
    Ok(Some(cluster))
}

/// `cargo xtask with-postgres COMMAND...`: COMMAND run beside a throwaway cluster.
fn with_postgres(args: &[OsString]) -> Result<()> {
    let Some((program, rest)) = args.split_first() else {
        bail!("with-postgres needs a command to run, e.g. `cargo xtask with-postgres cargo test`");
    };
    let bindir = pg::find_bindir().with_context(|| {
        format!(
            "PostgreSQL is not installed (no initdb on PATH, in {} or under /usr/lib/postgresql)",
            pg::BINDIR_ENV
        )
    })?;
    let cluster = pg::Cluster::start(&bindir, "ci", pg::TEST_SETTINGS)?;
    eprintln!("==> {}={}", pg::URL_ENV, cluster.url);
    let mut command = Command::new(program);
    command.args(rest).env(pg::URL_ENV, &cluster.url);
    run(command)
}

fn fmt_check() -> Result<()> {
    let mut command = cargo();
    command.args(["fmt", "--all", "--", "--check"]);
    run(command).context("formatting differs; run `cargo fmt --all`")
}

fn clippy() -> Result<()> {
    let mut command = cargo();
    command.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(command)
}

fn test() -> Result<()> {
    let mut command = cargo();
    // Slow suites only run when this is set; CI always runs them.
    command
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("AFS_SLOW_TESTS", "1")
        .stdout(Stdio::piped());
    // The PostgreSQL tests run on a private throwaway cluster (stopped and deleted when this
    // function returns), unless AFS_TEST_PG_URL already names a server.
    let _cluster = postgres_for_tests(&mut command)?;
    let shown = describe(&command);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    // Pass the output through while adding up the per-binary "test result:" lines, so the
    // run ends with one total (the last per-binary line is often an empty doc-test run).
    let mut totals = TestTotals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("cannot read the test output")?;
            totals.add_line(&line);
            println!("{line}");
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{shown}`"))?;
    println!(
        "\ntests: {} passed, {} failed",
        totals.passed, totals.failed
    );
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    if totals.passed == 0 {
        bail!("`{shown}` ran no test");
    }
    Ok(())
}

/// Sums of cargo test's "test result: ok. N passed; M failed; ..." lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            // "ok. 12 passed" / "FAILED. 1 passed" / "3 failed"
            if let [.., count, what] = words.as_slice() {
                let Ok(n) = count.parse::<u64>() else {
                    continue;
                };
                match *what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

fn layering() -> Result<()> {
    let root = root();
    let manifests = xtask::layering::workspace_manifests(&root)?;
    let violations = xtask::layering::check(&manifests);
    if violations.is_empty() {
        eprintln!(
            "layering ok: {} crates under crates/ depend only downward",
            manifests.len()
        );
        return Ok(());
    }
    for violation in &violations {
        eprintln!("{violation}");
    }
    bail!(
        "{} layering violation(s); the allowed edges are listed in xtask/src/layering.rs",
        violations.len()
    );
}

fn bench(args: &[OsString]) -> Result<()> {
    let mut build = cargo();
    build.args(["build", "--release", "-p", "afs-cli"]);
    run(build).context("cannot build afs-cli for the benchmark")?;

    let mut bench = cargo();
    bench
        .args(["run", "--release", "-p", "afs-bench", "--"])
        .args(args);
    run(bench)
}

fn format_duration(elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let whole = elapsed.as_secs();
    format!("{}m {:02}s", whole / 60, whole % 60)
}

#[cfg(test)]
mod tests {
    use super::TestTotals;

    #[test]
    fn test_result_lines_are_added_up() {
        let mut totals = TestTotals::default();
        for line in [
            "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s",
            "running 3 tests",
            "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
            "test result: ok. 0 passed; 0 failed; 0 ignored",
        ] {
            totals.add_line(line);
        }
        assert_eq!(
            totals,
            TestTotals {
                passed: 13,
                failed: 2
            }
        );
    }
}
