//! [`LeaseStore`] on PostgreSQL: lease `NAME` is a session-level advisory lock, taken with
//! `pg_try_advisory_lock(class, key)` on a connection of its own that the [`Lease`] keeps
//! open. Every process of every host sharing the database sees the same locks. Dropping the
//! lease closes its connection, and the server releases the lock; so does the end of the
//! holder's process, however it ends (the kernel closes its socket and the server ends the
//! session). A host that vanishes without closing its socket (power loss, a cut network)
//! loses its leases when TCP keepalives give up on it: the lease's connection asks for
//! keepalives after 10 s idle, every 5 s, 3 probes (about 25 s); until then the lease stays
//! held.
//!
//! The two-key form of advisory locks is used, with a class of afs's own, so a lease never
//! meets the one-key locks of migrations and runs.

use std::sync::Mutex;
use std::time::Duration;

use afs_store::{Lease, LeaseStore, Result, StoreError};
use postgres::NoTls;

use crate::error::{db, dbe};
use crate::store::PgStore;

/// The advisory-lock class of leases (the first key of the two-key form).
const LEASE_CLASS: i32 = 0x0afd_1ea5;

/// The second key of lease `name`: 32 bits of its FNV-1a hash.
fn lease_key(name: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

impl LeaseStore for PgStore {
    fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        if name.is_empty() || name.len() > 64 || !name.is_ascii() {
            return Err(StoreError::invalid(
                "lease",
                format!("{name:?} is not a short ASCII word"),
            ));
        }
        let mut config = self.pg.clone();
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let mut client = config
            .connect(NoTls)
            .map_err(|e| db(format!("connecting to {} for lease {name}", self.shown), e))?;
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&LEASE_CLASS, &lease_key(name)],
            )
            .map_err(dbe("taking a lease"))?
            .get(0);
        if !got {
            return Ok(None);
        }
        Ok(Some(Lease::new(name, Box::new(Mutex::new(client)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_differ_by_name() {
        assert_ne!(lease_key("loop"), lease_key("loop2"));
        assert_eq!(lease_key("loop"), lease_key("loop"));
    }
}
