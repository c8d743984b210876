//! Writing files so that a failed run leaves nothing behind: every file is written under a
//! temporary name in its target's directory, synced, and renamed only when the run succeeds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use afs_store::OutputTarget;

use crate::error::DatagenError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written is synced in the background every this many bytes, so the disk
/// writes overlap the rest of the run and the final sync has little left to do. Each sync
/// also costs a journal commit. (Generating a 14 MB training file on this project's 2-core
/// test machine, 14 runs alternating between builds: a sync every 4 MB took 6-9% less
/// wall and CPU time than one every MB; one sync at the end only, the slowest wall time;
/// no sync at all, ~15% less than every MB, but then a power cut soon after a run could
/// leave a truncated file at the target path.)
const SYNC_EVERY: u64 = 4 << 20;

/// The directory a file at `target` lives in (`.` for a bare file name).
pub(crate) fn dir_of(target: &Path) -> &Path {
    match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A file created under a unique temporary name next to `target`; removed on drop unless
/// it was renamed into place.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
    target: PathBuf,
    /// The target is a FIFO or character device: the content is copied into it on commit
    /// instead of renamed over it (see [`afs_store::resolve_output`]).
    stream: bool,
    writer: Option<BufWriter<HashingFile>>,
    bytes: u64,
    lines: u64,
    /// Syncs on a helper thread (started once the file is big enough, or by `finish`).
    syncer: Option<Syncer>,
    /// `bytes` at which to start the next background sync.
    next_sync: u64,
}

/// What the sync thread is asked to do.
#[derive(Debug, Clone, Copy)]
enum SyncRequest {
    /// `fdatasync`: the data written so far.
    Data,
    /// `fsync`: everything, metadata included (the last request).
    All,
}

/// A helper thread syncing one file (through its own handle on it) when asked.
#[derive(Debug)]
struct Syncer {
    requests: mpsc::Sender<SyncRequest>,
    thread: JoinHandle<io::Result<()>>,
}

impl Syncer {
    fn start(file: &File) -> io::Result<Self> {
        let file = file.try_clone()?;
        let (requests, rx) = mpsc::channel::<SyncRequest>();
        let thread = std::thread::Builder::new()
            .name("afs-datagen-sync".into())
            .spawn(move || {
                // The first error is kept: the kernel reports a failed write-back to one
                // sync only, so a later sync may succeed although data was lost.
                let mut result = Ok(());
                while let Ok(mut request) = rx.recv() {
                    // Requests that queued up meanwhile are served by one sync.
                    while let Ok(next) = rx.try_recv() {
                        if matches!(next, SyncRequest::All) {
                            request = SyncRequest::All;
                        }
                    }
                    let synced = match request {
                        SyncRequest::Data => file.sync_data(),
                        SyncRequest::All => file.sync_all(),
                    };
                    if result.is_ok() {
                        result = synced;
                    }
                }
                result
            })?;
        Ok(Syncer { requests, thread })
    }

    /// Waits for the requested syncs; the first error, if any.
    fn wait(self) -> io::Result<()> {
        drop(self.requests);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the sync thread panicked")))
    }
}

/// A file that hashes what is written to it. It sits under the `BufWriter`, so BLAKE3
/// sees megabyte-sized writes and can use its wide SIMD paths.
#[derive(Debug)]
struct HashingFile {
    file: File,
    hasher: blake3::Hasher,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl TempFile {
    /// Creates the temporary file (and the target's directory when missing).
    #[cfg(test)]
    pub(crate) fn create(target: &Path, context: &'static str) -> Result<Self, DatagenError> {
        Self::create_for(&OutputTarget::File(target.to_path_buf()), context)
    }

    /// Creates the temporary file for a checked target: next to a file, or in the system's
    /// temporary directory for a stream (a device's directory is not writable).
    pub(crate) fn create_for(
        target: &OutputTarget,
        context: &'static str,
    ) -> Result<Self, DatagenError> {
        let (target, stream) = match target {
            OutputTarget::File(p) => (p.as_path(), false),
            OutputTarget::Stream(p) => (p.as_path(), true),
        };
        let temp_dir = std::env::temp_dir();
        let dir = if stream {
            temp_dir.as_path()
        } else {
            dir_of(target)
        };
        fs::create_dir_all(dir).map_err(|e| DatagenError::io("create output directory", dir, e))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        target: target.to_path_buf(),
                        stream,
                        writer: Some(BufWriter::with_capacity(
                            1 << 20,
                            HashingFile {
                                file,
                                hasher: blake3::Hasher::new(),
                            },
                        )),
                        bytes: 0,
                        lines: 0,
                        syncer: None,
                        next_sync: SYNC_EVERY,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(DatagenError::io(context, dir, e)),
            }
        }
    }

    fn writer(&mut self) -> &mut BufWriter<HashingFile> {
        // `writer` is only taken by `commit` and `into_lines`, which consume `self`.
        self.writer.as_mut().expect("temporary file is open")
    }

    /// Appends one complete line (which ends with `\n`).
    pub(crate) fn write_line(&mut self, line: &[u8]) -> Result<(), DatagenError> {
        self.bytes += line.len() as u64;
        self.lines += 1;
        if let Err(e) = self.writer().write_all(line) {
            return Err(DatagenError::io("write", &self.path, e));
        }
        if self.bytes >= self.next_sync {
            self.next_sync = self.bytes + SYNC_EVERY;
            self.request_sync(SyncRequest::Data)?;
        }
        Ok(())
    }

    /// Asks the sync thread (started on first use) for a sync.
    fn request_sync(&mut self, request: SyncRequest) -> Result<(), DatagenError> {
        if self.syncer.is_none() {
            let file = &self
                .writer
                .as_ref()
                .expect("temporary file is open")
                .get_ref()
                .file;
            let syncer =
                Syncer::start(file).map_err(|e| DatagenError::io("sync", &self.path, e))?;
            self.syncer = Some(syncer);
        }
        let syncer = self.syncer.as_ref().expect("started above");
        // The thread only stops once `requests` is dropped, so sending cannot fail while
        // it runs; if it died, `wait` reports that.
        let _ = syncer.requests.send(request);
        Ok(())
    }

    /// Lines written so far.
    pub(crate) fn lines(&self) -> u64 {
        self.lines
    }

    /// Flushes and starts the final sync in the background (see [`commit`](Self::commit));
    /// returns the BLAKE3 hex digest and size of what was written.
    pub(crate) fn finish(&mut self) -> Result<(String, u64), DatagenError> {
        if let Err(e) = self.writer().flush() {
            return Err(DatagenError::io("write", &self.path, e));
        }
        self.request_sync(SyncRequest::All)?;
        let hash = self
            .writer()
            .get_ref()
            .hasher
            .finalize()
            .to_hex()
            .to_string();
        Ok((hash, self.bytes))
    }

    /// Waits for the (finished) file's syncs, then renames it to its target.
    fn rename_into_place(&mut self) -> Result<(), DatagenError> {
        drop(self.writer.take());
        if let Some(syncer) = self.syncer.take() {
            syncer
                .wait()
                .map_err(|e| DatagenError::io("sync", &self.path, e))?;
        }
        if self.stream {
            // Written into, never replaced: a FIFO keeps its reader, a device stays a device.
            let mut from =
                File::open(&self.path).map_err(|e| DatagenError::io("read back", &self.path, e))?;
            let mut to = OpenOptions::new()
                .write(true)
                .open(&self.target)
                .map_err(|e| DatagenError::io("open", &self.target, e))?;
            io::copy(&mut from, &mut to)
                .and_then(|_| to.flush())
                .map_err(|e| DatagenError::io("write", &self.target, e))?;
            let _ = fs::remove_file(&self.path);
        } else {
            fs::rename(&self.path, &self.target)
                .map_err(|e| DatagenError::io("rename into place", &self.target, e))?;
        }
        self.path = PathBuf::new();
        Ok(())
    }

    /// Renames the finished `files` to their targets, in order, once each is synced, then
    /// makes the renames durable with one sync per directory, where the platform allows.
    pub(crate) fn commit_all(files: Vec<TempFile>) -> Result<(), DatagenError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for mut file in files {
            file.rename_into_place()?;
            let dir = dir_of(&file.target).to_path_buf();
            if !file.stream && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }

    /// Renames the (finished) file to its target.
    #[cfg(test)]
    pub(crate) fn commit(self) -> Result<(), DatagenError> {
        TempFile::commit_all(vec![self])
    }

    /// Reads the lines back (for a spool), consuming the file; it is removed when the
    /// returned reader is dropped.
    pub(crate) fn into_lines(mut self) -> Result<SpoolReader, DatagenError> {
        // A spool is read back, never kept: background syncs were wasted, not needed.
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.wait();
        }
        let path = std::mem::take(&mut self.path);
        let mut file = self
            .writer
            .take()
            .expect("temporary file is open")
            .into_inner()
            .map_err(|e| DatagenError::io("write", &path, e.into_error()))?
            .file;
        file.rewind()
            .map_err(|e| DatagenError::io("read", &path, e))?;
        Ok(SpoolReader {
            reader: BufReader::with_capacity(1 << 20, file),
            path,
            buf: Vec::new(),
        })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.wait();
        }
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Lines of a spool file, read back in order; the file is removed on drop.
#[derive(Debug)]
pub(crate) struct SpoolReader {
    reader: BufReader<File>,
    path: PathBuf,
    buf: Vec<u8>,
}

impl SpoolReader {
    /// The next line including its `\n`, or `None` at the end.
    pub(crate) fn next_line(&mut self) -> Result<Option<&[u8]>, DatagenError> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| DatagenError::io("read", &self.path, e))?;
        Ok((n > 0).then_some(self.buf.as_slice()))
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_files_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        let mut f = TempFile::create(&target, "create").unwrap();
        f.write_line(b"{}\n").unwrap();
        drop(f);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn committed_file_has_content_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sub").join("out.jsonl");
        let mut f = TempFile::create(&target, "create").unwrap();
        f.write_line(b"{\"a\":1}\n").unwrap();
        f.write_line(b"{\"a\":2}\n").unwrap();
        let (hash, bytes) = f.finish().unwrap();
        f.commit().unwrap();
        let content = fs::read(&target).unwrap();
        assert_eq!(content, b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(bytes, content.len() as u64);
        assert_eq!(hash, blake3::hash(&content).to_hex().to_string());
        assert_eq!(fs::read_dir(target.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn big_files_are_synced_while_written() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("big.jsonl");
        let line = format!("{}\n", "x".repeat(999));
        let mut f = TempFile::create(&target, "create").unwrap();
        let mut spool = TempFile::create(&dir.path().join("spool"), "create").unwrap();
        for _ in 0..(3 * SYNC_EVERY / 1000) {
            f.write_line(line.as_bytes()).unwrap();
            spool.write_line(line.as_bytes()).unwrap();
        }
        assert!(f.syncer.is_some() && spool.syncer.is_some());
        let (hash, bytes) = f.finish().unwrap();
        TempFile::commit_all(vec![f]).unwrap();
        let content = fs::read(&target).unwrap();
        assert_eq!(bytes, content.len() as u64);
        assert_eq!(hash, blake3::hash(&content).to_hex().to_string());
        let mut r = spool.into_lines().unwrap();
        assert_eq!(r.next_line().unwrap(), Some(line.as_bytes()));
        drop(r);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn spool_reads_back_and_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = TempFile::create(&dir.path().join("x"), "create").unwrap();
        f.write_line(b"one\n").unwrap();
        f.write_line(b"two\n").unwrap();
        let mut r = f.into_lines().unwrap();
        assert_eq!(r.next_line().unwrap(), Some(&b"one\n"[..]));
        assert_eq!(r.next_line().unwrap(), Some(&b"two\n"[..]));
        assert_eq!(r.next_line().unwrap(), None);
        drop(r);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
