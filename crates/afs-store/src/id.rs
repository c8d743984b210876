//! Record ids: ULIDs (48-bit millisecond time + 80 random bits, Crockford base32).

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rand::RngCore;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Last id handed out by this process, so ids made within one millisecond still sort in
/// creation order (the random part is incremented instead of redrawn).
static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

/// A new record id for time `now`: 26 characters, unique across processes (80 random bits)
/// and lexicographically sortable by creation time (monotone within one process).
pub fn new_id(now: DateTime<Utc>) -> String {
    let ms = now.timestamp_millis().max(0) as u64 & ((1 << 48) - 1);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let random = if ms <= last.0 && last.1 < (1u128 << 80) - 1 {
        // Same (or an earlier, e.g. manual-clock) millisecond: keep the last time part and
        // step the random part so the new id sorts after the previous one.
        last.1 + 1
    } else {
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        // Leave headroom so increments within one millisecond do not overflow 80 bits.
        u128::from_le_bytes(bytes) & ((1u128 << 79) - 1)
    };
    let ms = ms.max(last.0);
    *last = (ms, random);
    drop(last);
    encode((u128::from(ms) << 80) | random)
}

fn encode(mut value: u128) -> String {
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time_and_within_a_millisecond() {
        let t = Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap();
        let mut ids: Vec<String> = (0..1000).map(|_| new_id(t)).collect();
        ids.push(new_id(t + chrono::Duration::milliseconds(1)));
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted, "ids must be strictly increasing");
        assert!(ids.iter().all(|id| id.len() == 26));
    }
}
