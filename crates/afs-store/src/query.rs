//! Filters for streaming records and windows for statistics.

use chrono::{DateTime, Utc};

/// Which records to return from [`crate::UsageStore::query`]. Every condition is optional;
/// the default returns every record, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordFilter {
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records strictly before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this expert.
    pub expert: Option<String>,
    /// Only this unit (user or session).
    pub unit_id: Option<String>,
    /// Only records with a quality score >= this value (records without a score are excluded,
    /// unless `keep_unscored`).
    pub min_quality: Option<f64>,
    /// With `min_quality`: also keep the records that have no quality score, for a caller
    /// that scores those itself. Without `min_quality` it changes nothing.
    pub keep_unscored: bool,
    /// Which feedback a record must have.
    pub feedback: FeedbackFilter,
    /// At most this many records.
    pub limit: Option<u64>,
    /// Oldest or newest first.
    pub order: Order,
    /// Which fields of each record to read.
    pub fields: RecordFields,
    /// How many records the store reads at a time.
    pub paging: Paging,
}

/// How many records a stream reads from the store at a time (the records and their order
/// are the same either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Paging {
    /// A small first read, so the first record arrives quickly, and larger ones after.
    #[default]
    Growing,
    /// Large reads from the start, for a caller that reads every record anyway: fewer
    /// queries, and (in SQLite) fewer times the database file is mapped into memory.
    Bulk,
}

/// Which fields of a record a query reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecordFields {
    /// Every field.
    #[default]
    All,
    /// What training data is made from: `id`, `timestamp`, `query`, `response`, `model`,
    /// `quality_score`, `feedback`, `pair_key` and `messages`. The other fields are `None`, and reading a
    /// record costs less.
    Training,
}

/// A condition on a record's feedback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FeedbackFilter {
    /// No condition.
    #[default]
    Any,
    /// Feedback present (any value).
    Present,
    /// Feedback absent.
    Absent,
    /// Feedback present and >= this value (-1, 0 or 1).
    AtLeast(i64),
}

/// Order of a record stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first (by timestamp, then insertion order).
    #[default]
    OldestFirst,
    /// Newest first.
    NewestFirst,
}

/// A time window and optional model for statistics: `[since, until)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsWindow {
    /// Start of the window, inclusive; `None` = from the beginning.
    pub since: Option<DateTime<Utc>>,
    /// End of the window, exclusive; `None` = no end.
    pub until: Option<DateTime<Utc>>,
    /// Only this model; `None` = all models.
    pub model: Option<String>,
}
