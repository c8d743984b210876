//! Leases: at most one holder of a named role (say, "the loop that acts") at a time, across
//! threads, handles, processes and, on a database several hosts share, hosts. A holder that
//! dies loses its lease without anyone's help: the backend ties the lease to something the
//! operating system or the database server releases when the process ends (an `flock` on a
//! file for SQLite, a session-level advisory lock on its own connection for PostgreSQL).

use std::any::Any;
use std::fmt;

use crate::error::Result;

/// A held lease; dropping it gives the lease up.
pub struct Lease {
    name: String,
    /// What keeps the lease held (a locked file, a connection); released on drop.
    _held: Box<dyn Any + Send + Sync>,
}

impl Lease {
    /// A lease named `name`, held as long as `held` lives. For backends.
    pub fn new(name: impl Into<String>, held: Box<dyn Any + Send + Sync>) -> Self {
        Lease {
            name: name.into(),
            _held: held,
        }
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("name", &self.name).finish()
    }
}

/// Named leases on the store's database.
///
/// # Contract
///
/// * [`try_lease`](Self::try_lease) returns the lease when nobody holds it, and `Ok(None)`
///   at once (never waiting) while another holder has it: another [`Lease`] of this handle,
///   of another handle, of another process, or of another host sharing the database.
/// * Dropping the [`Lease`] releases it; so does the end of its process, however it ends
///   (`kill -9` included), without a timeout to wait out on one host. On a database shared
///   over the network, a host that vanishes without closing its connection loses its
///   leases when the server notices (TCP keepalives; the backend documents its bound).
/// * Names are short ASCII words (`loop`); a backend may map them to a fixed-size key.
pub trait LeaseStore: Send + Sync {
    /// Takes lease `name` if nobody holds it; `None` while someone else does.
    fn try_lease(&self, name: &str) -> Result<Option<Lease>>;
}
