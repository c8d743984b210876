//! The seeded generator is afs's one SplitMix64 ([`afs_store::rng`]).

pub(crate) use afs_store::rng::{mix64, SplitMix64};
