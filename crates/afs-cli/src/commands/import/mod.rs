//! `afs import`: import records from a JSON Lines file or stdin, streamed, in batches.
//!
//! Every line is parsed and validated on its own (by [`crate::record_json`], the parser the
//! HTTP API uses too, with the keys of `afs records` output and `afs prune` archives
//! accepted), so a bad line is reported with its line number and skipped while the good
//! lines around it are written; each batch is one transaction.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Mutex;

use afs_store::{NewUsage, StoreError, UsageStore};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::{GlobalArgs, ImportArgs};
use crate::exit::InvalidInput;
use crate::output::{count, print_json, print_line};
use crate::record_json::{self, RecordError, IMPORT};
use crate::store_open::{configured, open, Create};

/// At most this many line errors are listed in the report; the count is always exact.
const MAX_LISTED_ERRORS: usize = 1000;

/// A rejected line.
#[derive(Debug, Serialize)]
struct LineError {
    /// 1-based line number.
    line: u64,
    /// What is wrong with it.
    error: String,
}

/// The final report, printed on stdout.
#[derive(Debug, Default, Serialize)]
struct Report {
    imported: u64,
    rejected: u64,
    errors: Vec<LineError>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    errors_truncated: bool,
}

impl Report {
    /// Adds another writer's report to this one.
    fn absorb(&mut self, other: Report) {
        self.imported += other.imported;
        let unlisted = other.rejected - other.errors.len() as u64;
        for error in other.errors {
            self.reject(error.line, error.error);
        }
        self.rejected += unlisted;
        self.errors_truncated |= other.errors_truncated;
    }

    fn reject(&mut self, line: u64, error: String) {
        tracing::debug!(line, %error, "line rejected");
        self.rejected += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(LineError { line, error });
        } else {
            self.errors_truncated = true;
        }
    }
}

/// Imports the file named by `args` and prints the report; exits with code 3 (through an
/// [`InvalidInput`] error) when any line was rejected.
pub(crate) fn run(global: &GlobalArgs, args: &ImportArgs) -> anyhow::Result<()> {
    let (mut reader, input_len) = open_input(&args.file)?;
    let config = configured(global)?;
    let max_field_bytes = config.max_field_bytes();
    let store = open(config, Create::IfMissing)?;
    // A line holds several text fields, each up to the limit, plus JSON escapes; anything
    // far beyond that is refused without being held in memory whole.
    let max_line_bytes = max_field_bytes.saturating_mul(16).max(64 * 1024);
    let progress = progress_bar(input_len);
    let counts = WriterCounts::default();
    let mut parsing = Parsing {
        reader: &mut *reader,
        file: &args.file,
        max_line_bytes,
        max_field_bytes,
        batch_size: args
            .batch_size
            .map_or_else(|| store.batch_rows(), |n| n as usize),
        progress: &progress,
        counts: &counts,
        report: Report::default(),
    };
    let written = parse_and_write(&store, &mut parsing);
    progress.finish_and_clear();
    let report = merge_reports(parsing.report, written?);
    tracing::info!(
        imported = report.imported,
        rejected = report.rejected,
        "import done"
    );
    print_report(&report, global.json)?;
    if report.rejected > 0 {
        return Err(InvalidInput(rejected_message(&report)).into());
    }
    Ok(())
}

/// Parsed records and their line numbers, one batch of a writer thread.
type ParsedBatch = (Vec<NewUsage>, Vec<u64>);

/// What the writer threads have committed and refused so far, for the progress bar.
#[derive(Debug, Default)]
struct WriterCounts {
    committed: AtomicU64,
    rejected: AtomicU64,
}

impl WriterCounts {
    /// The progress bar's message: records imported and lines rejected so far, by the
    /// parser (`parse_report`) and the writers together.
    fn message(&self, parse_report: &Report) -> String {
        format!(
            "{} imported, {} rejected",
            self.committed.load(Ordering::Relaxed),
            parse_report.rejected + self.rejected.load(Ordering::Relaxed)
        )
    }
}

/// Parsing and writing overlap: this thread parses the next batch while writer threads
/// commit earlier ones (a channel of one batch per writer keeps memory bounded). There are as
/// many writers as the store can use at once ([`UsageStore::batch_writers`]): one on SQLite,
/// whose writes are serialised anyway; two on PostgreSQL, where one connection's work is done
/// by one server process, which was the limit of an import with one writer. Returns the
/// writers' report; the parse rejects are in `parsing.report`.
fn parse_and_write(store: &dyn UsageStore, parsing: &mut Parsing<'_>) -> anyhow::Result<Report> {
    let counts = parsing.counts;
    let n_writers = store.batch_writers().clamp(1, MAX_WRITERS);
    let (to_writers, batches) = std::sync::mpsc::sync_channel::<ParsedBatch>(n_writers);
    let shared = SharedBatches {
        batches: Mutex::new(Some(batches)),
        stopped: AtomicBool::new(false),
    };
    let shared = &shared;
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..n_writers)
            .map(|_| scope.spawn(move || write_batches(store, shared, counts)))
            .collect();
        let parsed = parsing.parse(&to_writers);
        drop(to_writers);
        let mut written = Report::default();
        let (mut panicked, mut failed) = (false, None);
        for writer in writers {
            match writer.join() {
                Ok(Ok(report)) => written.absorb(report),
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(_) => panicked = true,
            }
        }
        if panicked {
            anyhow::bail!("an import writer thread panicked");
        }
        parsed?;
        match failed {
            // Every writer has stopped: the count is final.
            Some(failed) => Err(failed.error.context(format!(
                "import stopped at the batch of lines {}-{}, which was not imported; {} records \
                 of other batches were",
                failed.first_line,
                failed.last_line,
                counts.committed.load(Ordering::Acquire)
            ))),
            None => Ok(written),
        }
    })
}

/// A batch the store failed to write: the import stops.
struct WriterFailed {
    first_line: u64,
    last_line: u64,
    error: anyhow::Error,
}

/// Most writer threads of one import.
const MAX_WRITERS: usize = 4;

/// The parsed batches waiting for a writer, shared by the writers.
struct SharedBatches {
    /// The receiving end; taken (dropped) by a writer that stops on an error, so that the
    /// parser's next send fails and it stops too.
    batches: Mutex<Option<Receiver<ParsedBatch>>>,
    /// Set by a writer that stopped on an error: the others commit no further batch.
    stopped: AtomicBool,
}

impl SharedBatches {
    /// The next batch, or `None` once the parser is done or a writer stopped.
    fn next(&self) -> Option<ParsedBatch> {
        let batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        let batch = batches.as_ref()?.recv().ok()?;
        (!self.stopped.load(Ordering::Acquire)).then_some(batch)
    }
}

/// Stops the other writers and the parser when a writer leaves on an error or a panic.
struct StopOthers<'a> {
    shared: &'a SharedBatches,
    /// Whether the writer ran out of batches (nothing to stop).
    finished: bool,
}

impl Drop for StopOthers<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.stopped.store(true, Ordering::Release);
            let mut batches = self
                .shared
                .batches
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            batches.take();
        }
    }
}

/// A writer thread: commits each batch it takes, one transaction each, and adds to the
/// counts for the progress bar; returns its report. On an error it stops the import.
fn write_batches(
    store: &dyn UsageStore,
    shared: &SharedBatches,
    counts: &WriterCounts,
) -> Result<Report, WriterFailed> {
    let mut guard = StopOthers {
        shared,
        finished: false,
    };
    let mut batch = Batch {
        store,
        counts,
        records: Vec::new(),
        line_numbers: Vec::new(),
        report: Report::default(),
    };
    while let Some((records, line_numbers)) = shared.next() {
        batch.records = records;
        batch.line_numbers = line_numbers;
        batch.flush()?;
    }
    guard.finished = true;
    Ok(batch.report)
}

/// The parsing side of an import: the input, its limits, the progress display and the
/// lines rejected so far.
struct Parsing<'a> {
    reader: &'a mut dyn BufRead,
    /// The input's name, for errors.
    file: &'a Path,
    max_line_bytes: usize,
    max_field_bytes: usize,
    batch_size: usize,
    progress: &'a ProgressBar,
    counts: &'a WriterCounts,
    /// The lines rejected by the parser.
    report: Report,
}

impl Parsing<'_> {
    /// Reads and parses every line, sending each full batch (and the last, partial one) to
    /// the writers; stops early, without an error, when a writer has stopped.
    fn parse(&mut self, to_writer: &SyncSender<ParsedBatch>) -> anyhow::Result<()> {
        let mut pending = Pending::new(self.batch_size);
        let mut buf = Vec::with_capacity(4096);
        let mut line_number = 0u64;
        let mut bytes_read = 0u64;
        loop {
            buf.clear();
            let (read, n_bytes) = read_line(self.reader, &mut buf, self.max_line_bytes)
                .with_context(|| {
                    format!(
                        "cannot read {} at line {}",
                        self.file.display(),
                        line_number + 1
                    )
                })?;
            if read == LineRead::Eof {
                break;
            }
            line_number += 1;
            bytes_read += n_bytes;
            if line_number % 256 == 0 {
                self.show(bytes_read);
            }
            if read == LineRead::TooLong {
                let error = format!("line is longer than {} bytes", self.max_line_bytes);
                self.report.reject(line_number, error);
                continue;
            }
            let text = trim_line_end(&buf, line_number == 1);
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match record_json::parse(text, IMPORT, self.max_field_bytes) {
                Ok(record) => {
                    if let Some(full) = pending.push(record, line_number) {
                        if to_writer.send(full).is_err() {
                            // The writer stopped on an error; it reports it.
                            return Ok(());
                        }
                        self.show(bytes_read);
                    }
                }
                Err(error) => self.report.reject(line_number, error.to_string()),
            }
        }
        if let Some(rest) = pending.into_rest() {
            let _ = to_writer.send(rest);
        }
        Ok(())
    }

    /// Updates the progress bar: `bytes_read` of the input and the counts so far.
    fn show(&self, bytes_read: u64) {
        self.progress.set_position(bytes_read);
        self.progress.set_message(self.counts.message(&self.report));
    }
}

/// Parsed records not yet sent to a writer, with their line numbers.
struct Pending {
    records: Vec<NewUsage>,
    line_numbers: Vec<u64>,
    batch_size: usize,
}

impl Pending {
    /// No records, room for `batch_size`.
    fn new(batch_size: usize) -> Self {
        Pending {
            records: Vec::with_capacity(batch_size),
            line_numbers: Vec::with_capacity(batch_size),
            batch_size,
        }
    }

    /// Adds the record of line `line`; returns the batch once it holds `batch_size` records.
    fn push(&mut self, record: NewUsage, line: u64) -> Option<ParsedBatch> {
        self.records.push(record);
        self.line_numbers.push(line);
        if self.records.len() < self.batch_size {
            return None;
        }
        Some((
            std::mem::replace(&mut self.records, Vec::with_capacity(self.batch_size)),
            std::mem::replace(&mut self.line_numbers, Vec::with_capacity(self.batch_size)),
        ))
    }

    /// The records left over at the end, if any.
    fn into_rest(self) -> Option<ParsedBatch> {
        (!self.records.is_empty()).then_some((self.records, self.line_numbers))
    }
}

/// One report: parse rejects and store rejects (`written`), in line order.
fn merge_reports(parse_report: Report, written: Report) -> Report {
    let mut report = parse_report;
    report.absorb(written);
    report.errors.sort_by_key(|e| e.line);
    report
}

/// The error message of an import that rejected lines.
fn rejected_message(report: &Report) -> String {
    if report.imported == 0 {
        format!(
            "{} rejected; nothing was imported",
            if report.rejected == 1 {
                "the only line was".to_string()
            } else {
                format!("all {} lines were", report.rejected)
            }
        )
    } else {
        format!(
            "{} of {} lines rejected (the other lines were imported)",
            report.rejected,
            report.rejected + report.imported
        )
    }
}

/// Records waiting to be written, with their line numbers, and the report so far.
struct Batch<'a> {
    store: &'a dyn UsageStore,
    /// The counts of every writer, for the progress bar and the final count.
    counts: &'a WriterCounts,
    records: Vec<NewUsage>,
    line_numbers: Vec<u64>,
    report: Report,
}

impl Batch<'_> {
    /// Writes the waiting records in one transaction.
    ///
    /// Records were validated one by one already; should the store refuse one anyway, that
    /// line is reported and the rest of the batch is written without it.
    fn flush(&mut self) -> Result<(), WriterFailed> {
        while !self.records.is_empty() {
            match self.store.log_batch(self.records.clone()) {
                Ok(ids) => {
                    tracing::debug!(n_records = ids.len(), "batch committed");
                    self.report.imported += ids.len() as u64;
                    self.counts
                        .committed
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    self.records.clear();
                    self.line_numbers.clear();
                }
                Err(StoreError::InvalidBatchRecord { index, source })
                    if index < self.records.len() =>
                {
                    self.records.remove(index);
                    let line = self.line_numbers.remove(index);
                    self.report
                        .reject(line, RecordError::from(*source).to_string());
                    self.counts.rejected.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    return Err(WriterFailed {
                        first_line: self.line_numbers[0],
                        last_line: self.line_numbers[self.line_numbers.len() - 1],
                        error: err.into(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The outcome of reading one line.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A line (possibly the last one, without a newline) is in the buffer.
    Line,
    /// The line was longer than the limit; it was skipped and the buffer holds its start.
    TooLong,
    /// End of input.
    Eof,
}

/// Reads one line into `buf`, holding at most `max_bytes` (+1) of it in memory; returns
/// what was read and how many bytes of input were consumed.
fn read_line(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    max_bytes: usize,
) -> io::Result<(LineRead, u64)> {
    let n = Read::take(&mut *reader, max_bytes as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok((LineRead::Eof, 0));
    }
    if n <= max_bytes || buf.last() == Some(&b'\n') {
        return Ok((LineRead::Line, n as u64));
    }
    let skipped = skip_line(reader)?;
    Ok((LineRead::TooLong, (n + skipped) as u64))
}

/// Consumes input up to and including the next newline; returns the bytes consumed.
fn skip_line(reader: &mut dyn BufRead) -> io::Result<usize> {
    let mut n_skipped = 0;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if available.is_empty() {
            return Ok(n_skipped);
        }
        let (used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        reader.consume(used);
        n_skipped += used;
        if done {
            return Ok(n_skipped);
        }
    }
}

/// The line without its line ending (and, on the first line, without a UTF-8 BOM).
fn trim_line_end(buf: &[u8], first_line: bool) -> &[u8] {
    let mut text = buf;
    if first_line {
        text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    }
    text = text.strip_suffix(b"\n").unwrap_or(text);
    text.strip_suffix(b"\r").unwrap_or(text)
}

/// Opens the input: a file, or stdin for `-`. Also returns the file's length, if known.
fn open_input(path: &Path) -> anyhow::Result<(Box<dyn BufRead>, Option<u64>)> {
    if path.as_os_str() == "-" {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            eprintln!("reading JSON lines from the terminal; end with Ctrl-D");
        }
        return Ok((Box::new(stdin.lock()), None));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok((Box::new(BufReader::with_capacity(1 << 20, file)), len))
}

/// A progress bar on stderr when stderr is a terminal; hidden otherwise.
fn progress_bar(input_len: Option<u64>) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match input_len {
        Some(len) => (
            ProgressBar::new(len),
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} [{elapsed_precise}] {bytes} read {msg}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(report);
    }
    let mut text = format!(
        "imported {}; rejected {}",
        count(report.imported, "record"),
        count(report.rejected, "line")
    );
    for error in &report.errors {
        text.push_str(&format!("\n  line {}: {}", error.line, error.error));
    }
    if report.errors_truncated {
        let n_unlisted = report.rejected - report.errors.len() as u64;
        text.push_str(&format!(
            "\n  ... and {} not listed",
            count(n_unlisted, "more rejected line")
        ));
    }
    print_line(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_skipped_whole() {
        let input = b"short\nthis line is too long\nnext\nlast-no-newline";
        let mut reader: &[u8] = input;
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        loop {
            buf.clear();
            let (read, n) = read_line(&mut reader, &mut buf, 10).unwrap();
            if read == LineRead::Eof {
                break;
            }
            seen.push((
                read,
                n,
                String::from_utf8_lossy(trim_line_end(&buf, false)).to_string(),
            ));
        }
        assert_eq!(seen[0], (LineRead::Line, 6, "short".to_string()));
        assert_eq!(seen[1].0, LineRead::TooLong);
        assert_eq!(seen[1].1, 22);
        assert_eq!(seen[2], (LineRead::Line, 5, "next".to_string()));
        assert_eq!(seen[3].0, LineRead::TooLong);
        assert_eq!(seen.len(), 4);
        assert_eq!(seen.iter().map(|s| s.1).sum::<u64>(), input.len() as u64);
    }
}
