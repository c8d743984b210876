//! Training data generation: turns the usage log into training files that real trainers
//! accept.
//!
//! [`generate`] streams records from a [`afs_store::UsageStore`] through the feedback and
//! quality filters (scoring unscored records with a [`QualityScorer`]), exact and optional
//! near-duplicate removal, redaction of personal data and secrets ([`Redactor`]), a merge
//! with an existing training file (dedupe against it and rehearsal mixing), an optional
//! cap keeping the best samples, and writes one JSON object per line in a [`Format`]
//! through its [`Formatter`]. A manifest (`<output>.manifest.json`) records the config,
//! the counts, the records used and the BLAKE3 hash of the output.
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//! use afs_datagen::{generate, GeneratorConfig, HeuristicScorer};
//! use afs_store::{SystemClock};
//! use afs_store_sqlite::{SqliteConfig, SqliteStore};
//!
//! let store = SqliteStore::open(SqliteConfig::new("usage.db"), Arc::new(SystemClock))?;
//! let result = generate(&store, &GeneratorConfig::default(), Path::new("training.jsonl"), &HeuristicScorer, None)?;
//! println!("generated {} samples", result.final_count);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod error;
mod existing;
mod format;
mod key;
mod minhash;
mod output;
mod pipeline;
mod redact;
mod result;
mod rng;
mod scan;
mod scorer;
mod settings;

pub use config::{
    Format, GeneratorConfig, NearDedupeConfig, ParseFormatError, Shape, PLAIN_SEPARATOR,
};
pub use error::{BoxError, DatagenError};
pub use existing::{ExistingReport, MalformedLine, MAX_REPORTED_MALFORMED};
pub use format::{
    formatter, unsupported_example, Body, Example, ExampleKind, FormatOptions, Formatter, Metadata,
};
pub use pipeline::{generate, generate_with, manifest_path, Hooks};
pub use redact::{RedactionCounts, Redactor, CREDIT_CARD, EMAIL, IP_ADDRESS, PHONE, SECRET};
pub use result::{GenerationResult, Progress, QualityStats, RecordSpan, Stage};
pub use scorer::{HeuristicScorer, QualityScorer};
pub use settings::GeneratorSettings;
