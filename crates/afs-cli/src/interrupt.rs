//! SIGINT/SIGTERM for the commands that must stop cleanly. `afs retrain` and `afs loop` run
//! a trainer in its own process group, so a terminal's Ctrl-C does not reach it, and it
//! must not outlive `afs`: a signal sets the flag the trainer watches
//! ([`afs_trigger::CommandTrainer::interrupt_on`]), which stops its whole process group and
//! records the run as `interrupted`. `afs generate` sets its run's stop flag
//! ([`afs_datagen::Hooks::stop`]), so the run removes its unfinished files.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;

/// What each signal does, in order; the signal after the last step ends the process at once
/// with code 130.
pub(crate) enum Step {
    /// Run this (e.g. ask a loop to stop after its iteration) and print the message.
    Call(Box<dyn Fn() + Send>, &'static str),
    /// Set the flag given to [`install`] (a trainer's or a run's) and print the message.
    SetFlag(&'static str),
}

/// What `afs retrain` and `afs loop` say when a signal makes them exit at once.
pub(crate) const RUN_LEFT_UNFINISHED: &str =
    "afs: stopping at once; the next start records the unfinished run as failed";

/// Installs the handler for SIGINT and SIGTERM: the n-th signal takes the n-th step of
/// `steps`; one more prints `at_once` and ends the process with code 130. `flag` is the
/// flag a trainer was built with or a run watches.
pub(crate) fn install(
    flag: Arc<AtomicBool>,
    steps: Vec<Step>,
    at_once: &'static str,
) -> anyhow::Result<()> {
    let received = AtomicUsize::new(0);
    ctrlc::set_handler(
        move || match steps.get(received.fetch_add(1, Ordering::SeqCst)) {
            Some(Step::Call(action, message)) => {
                eprintln!("{message}");
                action();
            }
            Some(Step::SetFlag(message)) => {
                // Set before saying so: whoever reads the message can count on the flag.
                flag.store(true, Ordering::SeqCst);
                eprintln!("{message}");
            }
            None => {
                eprintln!("{at_once}");
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            }
        },
    )
    .context("cannot install the SIGINT/SIGTERM handler")
}
