//! The table of established connections: who they are, under which certificate generation they
//! were accepted, and how to ask one to close gracefully.
//!
//! It owns no socket. A connection's task registers itself after its handshake and holds a
//! [`Registration`] that removes the entry when the task ends, so the table can never list a
//! connection that is gone. A close a drain asked for is counted when that happens — when the
//! connection's task has ended — never when it is asked: a peer that stalls is still open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

struct Entry {
    generation: u64,
    accepted: Instant,
    close: Arc<Notify>,
    /// The counter of the drain that asked it to close, incremented when it has.
    closed_into: Option<Arc<AtomicUsize>>,
}

/// All established connections of this sidecar.
#[derive(Default)]
pub struct Connections {
    next_id: AtomicU64,
    table: Mutex<HashMap<u64, Entry>>,
}

/// A connection's place in the table; dropping it removes the entry.
pub struct Registration {
    id: u64,
    connections: Arc<Connections>,
    /// Notified when the connection should close gracefully.
    pub close: Arc<Notify>,
}

impl Registration {
    /// The connection's id, unique within this process (events name connections by it).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let entry = self
            .connections
            .table
            .lock()
            .expect("connections lock")
            .remove(&self.id);
        if let Some(counter) = entry.and_then(|e| e.closed_into) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Connections {
    pub fn register(self: &Arc<Self>, generation: u64) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.table.lock().expect("connections lock").insert(
            id,
            Entry {
                generation,
                accepted: Instant::now(),
                close: close.clone(),
                closed_into: None,
            },
        );
        Registration {
            id,
            connections: self.clone(),
            close,
        }
    }

    pub fn len(&self) -> usize {
        self.table.lock().expect("connections lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections per certificate generation, for `/status`.
    pub fn by_generation(&self) -> std::collections::BTreeMap<u64, usize> {
        let mut out = std::collections::BTreeMap::new();
        for entry in self.table.lock().expect("connections lock").values() {
            *out.entry(entry.generation).or_insert(0) += 1;
        }
        out
    }

    /// The order a drain closes connections in: older certificate generations first (they
    /// must move before that certificate expires anyway), then the longest-lived first.
    pub fn drain_order(&self) -> Vec<u64> {
        let table = self.table.lock().expect("connections lock");
        let mut ids: Vec<(u64, Instant, u64)> = table
            .iter()
            .map(|(id, e)| (e.generation, e.accepted, *id))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, _, id)| id).collect()
    }

    /// Asks one connection to close gracefully; `closed` counts it once it has. False if it
    /// is already gone.
    pub fn close(&self, id: u64, closed: &Arc<AtomicUsize>) -> bool {
        match self.table.lock().expect("connections lock").get_mut(&id) {
            Some(entry) => {
                // notify_one stores a permit, so a connection busy forwarding still sees it.
                entry.close.notify_one();
                // The newest drain counts it: a drain that asked before was replaced, and a
                // close counted into the replaced one would leave this drain forever one short
                // of finished (the pod reported "draining" until its next drain).
                entry.closed_into = Some(closed.clone());
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_order_puts_old_generations_first_and_entries_vanish_on_drop() {
        let table = Arc::new(Connections::default());
        let new = table.register(2);
        let old = table.register(1);
        let newer = table.register(2);
        let order = table.drain_order();
        assert_eq!(order, vec![old.id, new.id, newer.id]);
        assert_eq!(table.by_generation().get(&2), Some(&2));
        drop(old);
        assert_eq!(table.len(), 2);
        let closed = Arc::new(AtomicUsize::new(0));
        assert!(!table.close(order[0], &closed));
        assert!(table.close(order[1], &closed));
        // Asked is not closed: counted when the connection's task lets go of it.
        assert_eq!(closed.load(Ordering::Relaxed), 0);
        drop(new);
        assert_eq!(closed.load(Ordering::Relaxed), 1);
        drop(newer);
        assert_eq!(closed.load(Ordering::Relaxed), 1, "never asked to close");
    }

    #[test]
    fn a_close_asked_again_by_a_newer_drain_counts_for_the_newer_one() {
        let table = Arc::new(Connections::default());
        let slow = table.register(1);
        let (first, second) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        assert!(table.close(slow.id, &first));
        // Still closing (a peer taking its time) when a new drain replaces the first.
        assert!(table.close(slow.id, &second));
        drop(slow);
        assert_eq!(
            second.load(Ordering::Relaxed),
            1,
            "the running drain sees it"
        );
        assert_eq!(first.load(Ordering::Relaxed), 0);
    }
}
