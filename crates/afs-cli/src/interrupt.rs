//! SIGINT/SIGTERM for the commands that run a trainer (`afs retrain`, `afs loop`): the
//! trainer runs in its own process group, so a terminal's Ctrl-C does not reach it, and it
//! must not outlive `afs`. A signal sets the flag the trainer watches
//! ([`afs_trigger::CommandTrainer::interrupt_on`]), which stops its whole process group and
//! records the run as `interrupted`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;

/// What each signal does, in order; the signal after the last step ends the process at once
/// with code 130.
pub(crate) enum Step {
    /// Run this (e.g. ask a loop to stop after its iteration) and print the message.
    Call(Box<dyn Fn() + Send>, &'static str),
    /// Stop the running trainer (set the flag) and print the message.
    StopTrainer(&'static str),
}

/// Installs the handler for SIGINT and SIGTERM: the n-th signal takes the n-th step of
/// `steps`; one more ends the process with code 130. `trainer` is the flag the trainer was
/// built with.
pub(crate) fn install(trainer: Arc<AtomicBool>, steps: Vec<Step>) -> anyhow::Result<()> {
    let received = AtomicUsize::new(0);
    ctrlc::set_handler(
        move || match steps.get(received.fetch_add(1, Ordering::SeqCst)) {
            Some(Step::Call(action, message)) => {
                eprintln!("{message}");
                action();
            }
            Some(Step::StopTrainer(message)) => {
                eprintln!("{message}");
                trainer.store(true, Ordering::SeqCst);
            }
            None => {
                eprintln!(
                    "afs: stopping at once; the next start records the unfinished run as failed"
                );
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            }
        },
    )
    .context("cannot install the SIGINT/SIGTERM handler")
}
