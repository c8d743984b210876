//! [`LeaseStore`] in memory: a set of held names; a [`Lease`] removes its name on drop.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use afs_store::{Lease, LeaseStore, Result};

use crate::store::MemStore;

/// Removes its name from the set when the lease is dropped.
struct Held {
    name: String,
    leases: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

impl LeaseStore for MemStore {
    fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        let mut held = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if !held.insert(name.to_string()) {
            return Ok(None);
        }
        let guard = Held {
            name: name.to_string(),
            leases: self.leases.clone(),
        };
        Ok(Some(Lease::new(name, Box::new(guard))))
    }
}
