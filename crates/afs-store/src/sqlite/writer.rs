//! Group commit: one thread owns a write connection; concurrent `log` calls queue their
//! rows and are committed together in one transaction, each caller answered only after the
//! commit that holds its row.

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};

use super::rows::InsertRow;
use super::{open_connection, SqliteConfig};
use crate::error::{Result, StoreError};

/// Most rows one group transaction takes; bounds the latency of the first caller in a group.
const MAX_GROUP: usize = 1024;

enum Job {
    One(Box<InsertRow>, Sender<Result<String>>),
    Batch(Vec<InsertRow>, Sender<Result<Vec<String>>>),
}

pub(crate) struct Writer {
    jobs: Sender<Job>,
    thread: JoinHandle<()>,
}

/// A cheap handle for submitting rows to the writer.
pub(crate) struct Handle {
    jobs: Sender<Job>,
}

fn writer_gone() -> StoreError {
    StoreError::db(
        "log record",
        std::io::Error::other("the writer thread stopped"),
    )
}

impl Handle {
    pub(crate) fn log(&self, row: InsertRow) -> Result<String> {
        let (reply, answer) = mpsc::channel();
        self.jobs
            .send(Job::One(Box::new(row), reply))
            .map_err(|_| writer_gone())?;
        answer.recv().map_err(|_| writer_gone())?
    }

    pub(crate) fn log_batch(&self, rows: Vec<InsertRow>) -> Result<Vec<String>> {
        let (reply, answer) = mpsc::channel();
        self.jobs
            .send(Job::Batch(rows, reply))
            .map_err(|_| writer_gone())?;
        answer.recv().map_err(|_| writer_gone())?
    }
}

impl Writer {
    pub(crate) fn start(config: SqliteConfig) -> Result<Writer> {
        let conn = open_connection(&config)?;
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("afs-store-writer".into())
            .spawn(move || run(conn, queue))
            .map_err(|e| StoreError::Io {
                context: "start the writer thread".into(),
                source: e,
            })?;
        Ok(Writer { jobs, thread })
    }

    pub(crate) fn handle(&self) -> Handle {
        Handle {
            jobs: self.jobs.clone(),
        }
    }

    /// Stops accepting jobs and waits for the thread to finish the ones queued.
    pub(crate) fn shutdown(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

fn run(mut conn: Connection, queue: Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut singles = Vec::new();
        let mut batches = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next {
            match job {
                Job::One(row, reply) => singles.push((*row, reply)),
                Job::Batch(rows, reply) => batches.push((rows, reply)),
            }
            next = if singles.len() < MAX_GROUP {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if !singles.is_empty() {
            commit_group(&mut conn, singles);
        }
        for (rows, reply) in batches {
            let result = insert_all(&mut conn, rows.iter())
                .map(|()| rows.into_iter().map(|r| r.id).collect());
            let _ = reply.send(result);
        }
    }
}

fn insert_all<'r>(conn: &mut Connection, rows: impl Iterator<Item = &'r InsertRow>) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| StoreError::db("begin write", e))?;
    for row in rows {
        row.insert(&tx)
            .map_err(|e| StoreError::db(format!("insert record {}", row.id), e))?;
    }
    tx.commit().map_err(|e| StoreError::db("commit", e))
}

fn commit_group(conn: &mut Connection, group: Vec<(InsertRow, Sender<Result<String>>)>) {
    if group.len() > 1 && insert_all(conn, group.iter().map(|(row, _)| row)).is_err() {
        // One row spoiled the group: commit each on its own so only that caller sees an error.
        for (row, reply) in group {
            let result = insert_all(conn, std::iter::once(&row)).map(|()| row.id);
            let _ = reply.send(result);
        }
        return;
    }
    if group.len() == 1 {
        let (row, reply) = group.into_iter().next().expect("group of one");
        let result = insert_all(conn, std::iter::once(&row)).map(|()| row.id);
        let _ = reply.send(result);
        return;
    }
    for (row, reply) in group {
        let _ = reply.send(Ok(row.id));
    }
}
