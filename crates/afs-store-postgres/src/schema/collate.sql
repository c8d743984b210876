-- Schema version 4: the text keys afs indexes, sorts and groups by compare bytes
-- (COLLATE "C"), whatever the database's default collation.
--
-- Under a database collation such as en_US.UTF-8, every comparison in a B-tree of ids,
-- models or unit ids, and every sort of a rollup trigger's GROUP BY model, went through the
-- C library's strcoll. A 100k-record `afs import` into an en_US.UTF-8 database (dev
-- cluster, three runs each, interleaved) took 2.74-3.14 s and 4.7-5.6 s of CPU (client and
-- server) with the default collation, 2.43-2.71 s and 4.1-4.6 s with these keys in "C".
-- Under C.UTF-8 the two were within the runs' noise. Byte order is
-- also the order SQLite's BINARY collation and Rust's `str` give, so every backend sorts
-- unit ids and models alike. No value changes; PostgreSQL rebuilds the indexes on these
-- columns (not the tables), which takes a while on a large log.
ALTER TABLE afs_usage
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN model TYPE text COLLATE "C",
    ALTER COLUMN unit_id TYPE text COLLATE "C";
ALTER TABLE afs_usage_minute ALTER COLUMN model TYPE text COLLATE "C";
ALTER TABLE afs_usage_hour ALTER COLUMN model TYPE text COLLATE "C";
ALTER TABLE afs_usage_pending ALTER COLUMN model TYPE text COLLATE "C";
ALTER TABLE afs_experiment_live ALTER COLUMN model TYPE text COLLATE "C";
ALTER TABLE afs_experiment_unit ALTER COLUMN unit_id TYPE text COLLATE "C";
ALTER TABLE afs_experiment_unit_pre ALTER COLUMN unit_id TYPE text COLLATE "C";
