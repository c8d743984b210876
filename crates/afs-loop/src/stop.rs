//! `StopSignal`: a shareable stop request that wakes a sleeping loop at once.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Default)]
struct Flags {
    stop: bool,
    /// Bumped by [`StopSignal::wake`]; a sleeper returns when it changes.
    wakes: u64,
}

/// A stop request shared between the loop and whoever may stop it (a signal-handling thread,
/// an HTTP handler, a test).
///
/// Cloning gives another handle to the same request. Once requested, the stop stays
/// requested until [`reset`](Self::reset). Waking is for manual clocks: a caller that moved
/// the clock calls [`wake`](Self::wake) so the loop re-reads it instead of finishing its
/// current nap. Both are safe to call from any thread, but not from inside a Unix signal
/// handler (use a handler that runs on a thread, as the `ctrlc` and `signal-hook` crates
/// offer, and call [`request_stop`](Self::request_stop) there).
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    inner: Arc<(Mutex<Flags>, Condvar)>,
}

impl StopSignal {
    /// A signal with no stop requested.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Flags> {
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests a stop and wakes every waiting thread.
    pub fn request_stop(&self) {
        self.lock().stop = true;
        self.inner.1.notify_all();
    }

    /// Whether a stop was requested.
    pub fn is_stop_requested(&self) -> bool {
        self.lock().stop
    }

    /// Withdraws a stop request, so the loop can be run again.
    pub fn reset(&self) {
        self.lock().stop = false;
    }

    /// Wakes waiting threads without stopping them (they re-check the clock).
    pub fn wake(&self) {
        self.lock().wakes += 1;
        self.inner.1.notify_all();
    }

    /// Waits up to `timeout` of real time, returning early when a stop is requested or
    /// [`wake`](Self::wake) is called. Returns whether a stop is requested.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = self.lock();
        if guard.stop {
            return true;
        }
        let wakes = guard.wakes;
        let (guard, _) = self
            .inner
            .1
            .wait_timeout_while(guard, timeout, |f| !f.stop && f.wakes == wakes)
            .unwrap_or_else(|e| e.into_inner());
        guard.stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_stop_wakes_a_sleeper_at_once() {
        let signal = StopSignal::new();
        let other = signal.clone();
        let started = Instant::now();
        let sleeper = std::thread::spawn(move || other.wait(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        signal.request_stop();
        assert!(sleeper.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            signal.wait(Duration::from_secs(30)),
            "a stop stays requested"
        );
        signal.reset();
        assert!(!signal.is_stop_requested());
    }

    #[test]
    fn wake_ends_a_nap_without_stopping() {
        let signal = StopSignal::new();
        let other = signal.clone();
        let started = Instant::now();
        let sleeper = std::thread::spawn(move || other.wait(Duration::from_secs(30)));
        // A wake only ends a nap already begun, so keep waking until the sleeper returns.
        while !sleeper.is_finished() {
            signal.wake();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!sleeper.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            !signal.wait(Duration::from_millis(10)),
            "times out without a stop"
        );
    }
}
