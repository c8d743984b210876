//! Writing files so that a failed run leaves nothing behind: every file is written under a
//! temporary name in its target's directory, synced, and renamed only when the run succeeds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::DatagenError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

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
    writer: Option<BufWriter<HashingFile>>,
    bytes: u64,
    lines: u64,
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
    pub(crate) fn create(target: &Path, context: &'static str) -> Result<Self, DatagenError> {
        let dir = dir_of(target);
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
                        writer: Some(BufWriter::with_capacity(
                            1 << 20,
                            HashingFile {
                                file,
                                hasher: blake3::Hasher::new(),
                            },
                        )),
                        bytes: 0,
                        lines: 0,
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
        let path = self.path.clone();
        self.writer()
            .write_all(line)
            .map_err(|e| DatagenError::io("write", path, e))
    }

    /// Lines written so far.
    pub(crate) fn lines(&self) -> u64 {
        self.lines
    }

    /// Flushes and syncs; returns the BLAKE3 hex digest and size of what was written.
    pub(crate) fn finish(&mut self) -> Result<(String, u64), DatagenError> {
        let path = self.path.clone();
        let writer = self.writer();
        writer
            .flush()
            .map_err(|e| DatagenError::io("write", &path, e))?;
        let inner = writer.get_ref();
        inner
            .file
            .sync_all()
            .map_err(|e| DatagenError::io("sync", &path, e))?;
        Ok((inner.hasher.finalize().to_hex().to_string(), self.bytes))
    }

    /// Renames the (finished) file to its target.
    pub(crate) fn commit(mut self) -> Result<(), DatagenError> {
        drop(self.writer.take());
        fs::rename(&self.path, &self.target)
            .map_err(|e| DatagenError::io("rename into place", &self.target, e))?;
        // The file is in place; make the rename itself durable where the platform allows.
        if let Ok(dir) = File::open(dir_of(&self.target)) {
            let _ = dir.sync_all();
        }
        self.path = PathBuf::new();
        Ok(())
    }

    /// Reads the lines back (for a spool), consuming the file; it is removed when the
    /// returned reader is dropped.
    pub(crate) fn into_lines(mut self) -> Result<SpoolReader, DatagenError> {
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
