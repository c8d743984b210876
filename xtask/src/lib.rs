//! Repository rules shared by `cargo xtask` and the `afs-tests` tidy tests.
//!
//! The rules live here, as plain functions over parsed data, so that `cargo xtask ci` and
//! `cargo test` enforce exactly the same thing.

pub mod layering;
pub mod pg;
pub mod tidy;
