//! Per-unit experiment statistics on PostgreSQL (what `ExperimentStore::unit_stats` reads).
