//! A child process for the end-to-end loop tests: runs one loop iteration on a database
//! with a given trainer command, so a test can kill it in the middle of the iteration.
//!
//! Usage: `afs-loop-child DB OUTPUT_DIR NOW_RFC3339 TRAIN_COMMAND`. The clock stands at
//! `NOW_RFC3339`; the loop uses [`afs_tests::e2e_loop_config`]. Prints the iteration's
//! summary if it ends (the test kills it before that).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use afs_loop::ContinuousLearningLoop;
use afs_trigger::CommandTrainer;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, output_dir, now, command] = args.as_slice() else {
        eprintln!("usage: afs-loop-child DB OUTPUT_DIR NOW_RFC3339 TRAIN_COMMAND");
        return ExitCode::from(2);
    };
    let now = match chrono::DateTime::parse_from_rfc3339(now) {
        Ok(t) => t.with_timezone(&chrono::Utc),
        Err(e) => {
            eprintln!("bad time {now:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let (store, _clock) = afs_tests::open_manual_store(Path::new(db), now);
    let config = afs_tests::e2e_loop_config(Path::new(output_dir));
    let trainer = CommandTrainer::shell(command.as_str(), Duration::from_secs(120));
    let learning = match ContinuousLearningLoop::new(store, config, Box::new(trainer)) {
        Ok(learning) => learning,
        Err(e) => {
            eprintln!("cannot start the loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    match learning.run_iteration() {
        Ok(report) => {
            println!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("iteration failed: {e}");
            ExitCode::FAILURE
        }
    }
}
