//! [`LeaseStore`] on SQLite: lease `NAME` of database `afs.db` is an exclusive `flock(2)` on
//! the file `afs.db.lease-NAME` beside it, taken without waiting. The kernel releases it when
//! the [`Lease`] drops (the file is closed) and when the process ends however it ends, so a
//! holder killed with `kill -9` loses it at once. A SQLite file belongs to one host, and so
//! do its leases. The lock file is left in place (empty); only the lock on it matters.

use std::fs::OpenOptions;
use std::path::PathBuf;

use afs_store::{Lease, LeaseStore, Result, StoreError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::SqliteStore;

impl SqliteStore {
    /// The lock file of lease `name`.
    fn lease_path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(StoreError::invalid(
                "lease",
                format!("{name:?} is not a short word of letters, digits, '-' and '_'"),
            ));
        }
        let mut path = self.config.path.as_os_str().to_os_string();
        path.push(format!(".lease-{name}"));
        Ok(PathBuf::from(path))
    }
}

impl LeaseStore for SqliteStore {
    fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        let path = self.lease_path(name)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::Io {
                context: format!("cannot open the lease file {}", path.display()),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => Ok(Some(Lease::new(name, Box::new(locked)))),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(StoreError::Io {
                context: format!("cannot lock the lease file {}", path.display()),
                source: std::io::Error::from(errno),
            }),
        }
    }
}
