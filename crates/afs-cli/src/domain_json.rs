//! The one JSON form of each domain type, shared by `--json` output and the HTTP API: the
//! types serialise themselves (serde in `afs_store`: times in RFC 3339, enums by their stored
//! names), and what a type cannot know (an experiment's elapsed time, which needs "now") is
//! added here, once.

use afs_store::{Experiment, ExperimentEvent, ModelVersion};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// A model version.
pub(crate) fn version(version: &ModelVersion) -> Value {
    serde_json::to_value(version).unwrap_or(Value::Null)
}

/// An experiment, with `elapsed_hours` up to its end or to `now`.
pub(crate) fn experiment(experiment: &Experiment, now: DateTime<Utc>) -> Value {
    let mut value = serde_json::to_value(experiment).unwrap_or(Value::Null);
    let until = experiment.ended_at.unwrap_or(now);
    value["elapsed_hours"] = (elapsed_hours(experiment.started_at, until)).into();
    value
}

/// An event of the experiment log; its statistics (the judge's JSON) only when asked for.
pub(crate) fn event(event: &ExperimentEvent, with_statistics: bool) -> Value {
    let mut value = serde_json::to_value(event).unwrap_or(Value::Null);
    if !with_statistics {
        if let Some(object) = value.as_object_mut() {
            object.remove("statistics");
        }
    }
    value
}

/// Hours between two times, to the millisecond.
pub(crate) fn elapsed_hours(since: DateTime<Utc>, until: DateTime<Utc>) -> f64 {
    (until - since).num_milliseconds() as f64 / 3_600_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use afs_store::{EventKind, ExperimentPeriod, ExperimentStatus, VersionStatus, WeightSource};
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, h, 0, 0).unwrap()
    }

    #[test]
    fn each_type_has_one_shape_with_stored_names_and_rfc3339_times() {
        let v = ModelVersion {
            id: 2,
            name: "m2".into(),
            model_path: "/m2".into(),
            status: VersionStatus::Challenger,
            traffic_weight: 0.25,
            created_at: at(1),
            promoted_at: None,
            retired_at: None,
            dataset: None,
            run_id: Some("r1".into()),
        };
        assert_eq!(
            version(&v),
            serde_json::json!({
                "id": 2, "name": "m2", "model_path": "/m2", "status": "challenger",
                "traffic_weight": 0.25, "created_at": "2025-06-01T01:00:00Z",
                "promoted_at": null, "retired_at": null, "dataset": null, "run_id": "r1",
            })
        );
        let e = Experiment {
            id: 1,
            champion: "m1".into(),
            challenger: "m2".into(),
            status: ExperimentStatus::RolledBack,
            seed: 9,
            challenger_weight: 0.25,
            started_at: at(1),
            ended_at: Some(at(4)),
            periods: vec![ExperimentPeriod {
                index: 0,
                started_at: at(1),
                ended_at: Some(at(4)),
                challenger_weight: 0.25,
                source: WeightSource::Initial,
            }],
        };
        let json = experiment(&e, at(10));
        assert_eq!(json["status"], "rolled_back");
        assert_eq!(json["seed"], 9);
        assert_eq!(json["elapsed_hours"], 3.0);
        assert_eq!(json["periods"][0]["source"], "initial");
        assert_eq!(json["ended_at"], "2025-06-01T04:00:00Z");
        let ev = ExperimentEvent {
            id: 5,
            at: at(2),
            experiment_id: Some(1),
            kind: EventKind::SetWeight,
            model: Some("m2".into()),
            decision: None,
            weight: Some(0.5),
            reason: "manual".into(),
            statistics: Some("{\"n\":3}".into()),
        };
        assert_eq!(event(&ev, true)["statistics"]["n"], 3);
        assert_eq!(event(&ev, true)["kind"], "set_weight");
        assert!(event(&ev, false).get("statistics").is_none());
    }
}
