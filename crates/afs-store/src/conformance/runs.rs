//! The `RunStore` checks: one retrain at a time, a run's single transition to its final
//! status, history and the state entries (one process; the cross-process run-owner check is
//! part of [`super::two_processes`]).

use chrono::{DateTime, Duration, Utc};

use super::{fresh, utc, Check, Factory};
use crate::{ErrorKind, NewRun, RunOutcome, RunStatus};

/// The checks of this area.
pub(super) fn checks() -> Vec<Check> {
    vec![
        (
            "runs::a_run_goes_from_running_to_its_final_status_once",
            a_run_goes_from_running_to_its_final_status_once,
        ),
        ("runs::state_survives_reopening", state_survives_reopening),
        (
            "runs::run_counts_equal_the_runs_of_each_status",
            run_counts_equal_the_runs_of_each_status,
        ),
        ("runs::a_run_id_is_used_once", a_run_id_is_used_once),
    ]
}

fn start() -> DateTime<Utc> {
    utc(2026, 2, 1, 0, 0, 0)
}

/// A run request of the given trigger type.
pub(super) fn new_run(trigger: &str) -> NewRun {
    NewRun {
        id: None,
        trigger_type: trigger.into(),
        trigger: "{\"reason\":\"test\"}".into(),
        run_dir: "/tmp/run".into(),
    }
}

fn failed() -> RunOutcome {
    RunOutcome {
        status: RunStatus::Failed,
        model_path: None,
        metrics: None,
        error: None,
    }
}

fn a_run_goes_from_running_to_its_final_status_once(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let (store, clock) = (f.store.as_ref(), &f.clock);
    let run = store.begin_run(new_run("manual")).unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.owner_pid, std::process::id());
    assert_eq!(
        store.begin_run(new_run("manual")).unwrap_err().kind(),
        ErrorKind::Conflict
    );

    store
        .set_run_dataset(&run.id, "/tmp/run/data.jsonl", "{}", 1200)
        .unwrap();
    clock.advance(Duration::minutes(5));
    let done = store
        .finish_run(
            &run.id,
            RunOutcome {
                status: RunStatus::Completed,
                model_path: Some("/m".into()),
                metrics: Some("{\"loss\":0.2}".into()),
                error: None,
            },
        )
        .unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    assert_eq!(done.n_samples, Some(1200));
    assert_eq!(
        done.finished_at,
        Some(run.started_at + Duration::minutes(5))
    );
    let again = store.finish_run(&run.id, failed());
    assert_eq!(again.unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(
        store.finish_run("nope", failed()).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store
            .last_run_with_status(RunStatus::Completed)
            .unwrap()
            .unwrap()
            .id,
        run.id
    );
    assert!(store
        .last_run_with_status(RunStatus::Failed)
        .unwrap()
        .is_none());

    // A second run may start now; history is newest first.
    clock.advance(Duration::minutes(1));
    let second = store.begin_run(new_run("schedule")).unwrap();
    let ids: Vec<String> = store.runs(10).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![second.id, run.id]);
}

/// State entries: missing, put, put several (the last value of a key wins), an empty key
/// refused; read back through a handle opened after the first is dropped when the backend
/// opens other handles.
fn state_survives_reopening(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let store = f.store;
    assert_eq!(store.state("trigger").unwrap(), None);
    store.put_state("trigger", "{\"baseline\":0.8}").unwrap();
    store
        .put_states(&[("trigger", "{\"baseline\":0.7}"), ("other", "1")])
        .unwrap();
    assert_eq!(
        store.put_state("", "x").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let store = match f.open.as_ref() {
        Some(open) => {
            drop(store);
            open()
        }
        None => {
            println!("    (the backend opens no other handle: reopening not checked)");
            store
        }
    };
    assert_eq!(
        store.state("trigger").unwrap().as_deref(),
        Some("{\"baseline\":0.7}")
    );
    assert_eq!(store.state("other").unwrap().as_deref(), Some("1"));
}

fn run_counts_equal_the_runs_of_each_status(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let store = f.store.as_ref();
    let statuses = [
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Interrupted,
    ];
    let finals = [
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Completed,
        RunStatus::TimedOut,
        RunStatus::Interrupted,
        RunStatus::Completed,
    ];
    for status in finals {
        let run = store.begin_run(new_run("manual")).unwrap();
        f.clock.advance(Duration::minutes(1));
        store
            .finish_run(&run.id, RunOutcome { status, ..failed() })
            .unwrap();
    }
    store.begin_run(new_run("manual")).unwrap();
    let all = store.runs(usize::MAX).unwrap();
    for status in statuses {
        let n = all.iter().filter(|r| r.status == status).count() as u64;
        assert_eq!(store.count_runs(status).unwrap(), n, "{}", status.as_str());
    }
    assert_eq!(store.count_runs(RunStatus::Completed).unwrap(), 3);
    assert_eq!(store.count_runs(RunStatus::Running).unwrap(), 1);
}

fn a_run_id_is_used_once(factory: &dyn Factory) {
    let f = fresh(factory, start());
    let store = f.store.as_ref();
    let first = store.begin_run(new_run("manual")).unwrap();
    store.finish_run(&first.id, failed()).unwrap();
    let again = NewRun {
        id: Some(first.id.clone()),
        ..new_run("manual")
    };
    assert_eq!(
        store.begin_run(again).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(store.run(&first.id).unwrap().status, RunStatus::Failed);
    assert_eq!(store.runs(10).unwrap().len(), 1);
}
