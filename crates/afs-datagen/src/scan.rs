//! Reading the store on several threads in log order: the window is cut into time slices,
//! worker threads read and prepare the records of alternate slices, and the calling thread
//! consumes the prepared records slice by slice, so the order is the log's.

use std::ops::Range;
use std::sync::mpsc::{self, Receiver, SyncSender};

use afs_store::{Order, Paging, RecordFilter, UsageRecord, UsageStore};
use chrono::{DateTime, Utc};

use crate::error::DatagenError;

/// About how many records a slice holds. A worker reads a slice while the consumer is on
/// another one, so its queue must hold a whole slice for the workers never to wait.
const SLICE_RECORDS: u64 = 512;
/// Records per message from a worker to the consumer.
const BATCH: usize = 64;
/// Messages a worker may have waiting: a little more than one slice, so memory stays
/// bounded (two workers hold at most ~2,500 prepared records) whatever the log's size.
const QUEUE: usize = SLICE_RECORDS as usize / BATCH + 4;

/// Prepared records of one slice, with the bytes their ranges point into (formatted lines,
/// kept in one buffer so a batch costs two allocations, not one per record).
pub(crate) struct Batch<T> {
    items: Vec<T>,
    bytes: Vec<u8>,
}

impl<T> Batch<T> {
    fn new() -> Self {
        Batch {
            items: Vec::with_capacity(BATCH),
            bytes: Vec::new(),
        }
    }
}

/// A prepared record's bytes in its batch.
pub(crate) type Bytes = Range<usize>;

/// What a worker sends.
enum Message<T> {
    Batch(Batch<T>),
    /// The current slice is complete.
    EndOfSlice,
    Failed(DatagenError),
}

/// How many worker threads read the store: one per core, at most four (the store's pool
/// has eight connections, and more threads than cores only add switching).
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Cuts the records `filter` selects into slices of about [`SLICE_RECORDS`] of the
/// `expected` records each, by time: equal spans between the first and the last record.
/// Slices only spread the work, so uneven ones cost speed, never correctness: together they
/// select exactly what `filter` selects, oldest slice first.
pub(crate) fn slices(
    store: &dyn UsageStore,
    filter: &RecordFilter,
    expected: u64,
    workers: usize,
) -> Result<Vec<RecordFilter>, DatagenError> {
    // Workers read every record of their slices: in large pages from the start.
    let filter = &RecordFilter {
        paging: Paging::Bulk,
        ..filter.clone()
    };
    let n = expected.div_ceil(SLICE_RECORDS);
    if workers < 2 || n < 2 {
        return Ok(vec![filter.clone()]);
    }
    let end = |order| -> Result<Option<DateTime<Utc>>, DatagenError> {
        let one = RecordFilter {
            limit: Some(1),
            order,
            ..filter.clone()
        };
        Ok(store.query(&one)?.next().transpose()?.map(|r| r.timestamp))
    };
    let (Some(first), Some(last)) = (end(Order::OldestFirst)?, end(Order::NewestFirst)?) else {
        return Ok(vec![filter.clone()]);
    };
    let (first_us, last_us) = (first.timestamp_micros(), last.timestamp_micros());
    let span = (last_us - first_us).max(0) as u64;
    let n = n.min(span);
    if n < 2 {
        return Ok(vec![filter.clone()]);
    }
    // Inner boundaries only: the first slice keeps the filter's `since`, the last its
    // `until`, so records outside [first, last] (written meanwhile) are not lost.
    let boundaries: Vec<DateTime<Utc>> = (1..n)
        .filter_map(|k| {
            let offset = (u128::from(span) * u128::from(k) / u128::from(n)) as i64;
            DateTime::from_timestamp_micros(first_us + offset)
        })
        .collect();
    let mut out = Vec::with_capacity(boundaries.len() + 1);
    let mut since = filter.since;
    for &boundary in &boundaries {
        out.push(RecordFilter {
            since,
            until: Some(boundary),
            ..filter.clone()
        });
        since = Some(boundary);
    }
    out.push(RecordFilter {
        since,
        ..filter.clone()
    });
    Ok(out)
}

/// Reads the records of `slices` on `workers` threads, each running `prepare` (with its
/// own state from `new_state`) on its records, and hands the prepared records to
/// `consume` on the calling thread in log order, with the bytes of their batch.
///
/// `prepare` runs ahead of `consume` by at most a slice or so per worker. If `consume`
/// fails, the workers stop at their next batch and the error is returned; a store error in
/// a worker is returned once the records before it have been consumed. Consumed batches go
/// back to the worker that filled them, which frees or reuses them: memory freed by the
/// thread that allocated it keeps the allocator's per-thread arenas from contending.
pub(crate) fn scan<T, S>(
    store: &dyn UsageStore,
    slices: &[RecordFilter],
    workers: usize,
    new_state: &(dyn Fn() -> S + Sync),
    prepare: &(dyn Fn(&mut S, UsageRecord, &mut Vec<u8>) -> T + Sync),
    mut consume: impl FnMut(&T, &[u8]) -> Result<(), DatagenError>,
) -> Result<(), DatagenError>
where
    T: Send,
{
    let workers = workers.clamp(1, slices.len().max(1));
    std::thread::scope(|scope| {
        let mut channels = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            let (back_tx, back_rx) = mpsc::channel();
            channels.push((rx, back_tx));
            let own = slices.iter().skip(w).step_by(workers);
            scope.spawn(move || work(store, own, new_state, prepare, &tx, &back_rx));
        }
        for i in 0..slices.len() {
            let (rx, back) = &channels[i % workers];
            loop {
                match rx.recv() {
                    Ok(Message::Batch(batch)) => {
                        for item in &batch.items {
                            consume(item, &batch.bytes)?;
                        }
                        // A worker that has finished no longer takes batches back.
                        let _ = back.send(batch);
                    }
                    Ok(Message::EndOfSlice) => break,
                    Ok(Message::Failed(e)) => return Err(e),
                    // The worker panicked; the scope re-raises its panic.
                    Err(mpsc::RecvError) => return Ok(()),
                }
            }
        }
        Ok(())
        // Returning drops the channels: workers blocked on a full queue stop, and finished
        // ones free their last batches and end.
    })
}

/// One worker: reads its slices in order and sends their prepared records, stopping when
/// the consumer is gone. Batches that come back are cleared and refilled.
fn work<'a, T, S>(
    store: &dyn UsageStore,
    slices: impl Iterator<Item = &'a RecordFilter>,
    new_state: &(dyn Fn() -> S + Sync),
    prepare: &(dyn Fn(&mut S, UsageRecord, &mut Vec<u8>) -> T + Sync),
    tx: &SyncSender<Message<T>>,
    back: &Receiver<Batch<T>>,
) {
    let fresh = || match back.try_recv() {
        Ok(mut batch) => {
            batch.items.clear();
            batch.bytes.clear();
            batch
        }
        Err(_) => Batch::new(),
    };
    let mut state = new_state();
    for slice in slices {
        let stream = match store.query(slice) {
            Ok(stream) => stream,
            Err(e) => {
                let _ = tx.send(Message::Failed(e.into()));
                return;
            }
        };
        let mut batch = fresh();
        for record in stream {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    let _ = tx.send(Message::Batch(batch));
                    let _ = tx.send(Message::Failed(e.into()));
                    return;
                }
            };
            let item = prepare(&mut state, record, &mut batch.bytes);
            batch.items.push(item);
            if batch.items.len() == BATCH {
                let full = std::mem::replace(&mut batch, fresh());
                if tx.send(Message::Batch(full)).is_err() {
                    return;
                }
            }
        }
        if !batch.items.is_empty() && tx.send(Message::Batch(batch)).is_err() {
            return;
        }
        if tx.send(Message::EndOfSlice).is_err() {
            return;
        }
    }
    // Free what the consumer sends back until it is done.
    for batch in back {
        drop(batch);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use afs_store::{Feedback, FeedbackFilter, FeedbackValue, ManualClock, NewUsage};
    use afs_store_sqlite::{SqliteConfig, SqliteStore};
    use chrono::{Duration, TimeZone};

    use super::*;

    /// A store of `n` records a minute apart (some at the same instant), every third one
    /// with positive feedback, alternating between two models.
    fn store(dir: &std::path::Path, n: i64) -> SqliteStore {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let store = SqliteStore::open(SqliteConfig::new(dir.join("usage.db")), clock).unwrap();
        let records = (0..n)
            .map(|i| NewUsage {
                timestamp: Some(start + Duration::minutes(i - i % 7 / 3)),
                feedback: (i % 3 == 0).then_some(Feedback {
                    value: FeedbackValue::Positive,
                    text: None,
                    at: None,
                }),
                ..NewUsage::new(
                    format!("q{i}"),
                    format!("r{i}"),
                    if i % 2 == 0 { "m1" } else { "m2" },
                )
            })
            .collect();
        store.log_batch(records).unwrap();
        store
    }

    fn ids(store: &SqliteStore, filter: &RecordFilter) -> Vec<String> {
        store
            .query(filter)
            .unwrap()
            .map(|r| r.unwrap().id)
            .collect()
    }

    #[test]
    fn slices_together_stream_the_filter_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 5000);
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let filters = [
            RecordFilter::default(),
            RecordFilter {
                feedback: FeedbackFilter::AtLeast(1),
                ..RecordFilter::default()
            },
            RecordFilter {
                since: Some(start + Duration::minutes(100)),
                until: Some(start + Duration::minutes(4000)),
                model: Some("m2".into()),
                ..RecordFilter::default()
            },
        ];
        for filter in filters {
            let expected = ids(&store, &filter);
            for workers in 1..=3 {
                let slices = slices(&store, &filter, expected.len() as u64, workers).unwrap();
                if workers > 1 {
                    assert!(slices.len() > 2, "{} slices", slices.len());
                }
                let mut got = Vec::new();
                scan(
                    &store,
                    &slices,
                    workers,
                    &|| (),
                    &|_, record, bytes| {
                        bytes.extend_from_slice(record.id.as_bytes());
                        let end = bytes.len();
                        (record.id, end - 26..end)
                    },
                    |(id, range), bytes| {
                        assert_eq!(&bytes[range.clone()], id.as_bytes());
                        got.push(id.clone());
                        Ok(())
                    },
                )
                .unwrap();
                assert_eq!(got, expected, "{workers} workers");
            }
        }
    }

    #[test]
    fn a_failing_consumer_stops_the_workers() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 5000);
        let filter = RecordFilter::default();
        let slices = slices(&store, &filter, 5000, 2).unwrap();
        let mut seen = 0;
        let result = scan(&store, &slices, 2, &|| (), &|_, _, _| (), |_, _| {
            seen += 1;
            if seen == 700 {
                return Err(DatagenError::InvalidScore {
                    id: "x".into(),
                    value: 2.0,
                });
            }
            Ok(())
        });
        assert!(matches!(result, Err(DatagenError::InvalidScore { .. })));
        assert_eq!(seen, 700);
    }
}
