//! The set of addresses agents may connect to, shared by the whole fleet and replaceable while
//! it runs.
//!
//! A load balancer's view of a Service changes under the clients: a pod whose readiness fails
//! leaves it, a new or restarted pod joins with a new address. [`Targets`] is that view: every
//! connection attempt reads the current set ([`Targets::snapshot`]) and whoever follows the
//! Service (the e2e harness's `endpoints::follow`) replaces it ([`Targets::set`]). It owns only
//! the list: it never resolves names, talks to an API server or closes connections, and a
//! reader never waits longer than it takes to clone an `Arc`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// A shared, replaceable list of target addresses; clones are handles to the same list.
///
/// Replacing the list only steers new connection attempts: connections already established
/// to an address that left the list stay up, as they do behind kube-proxy (conntrack keeps
/// them) until the server closes them.
#[derive(Clone, Default)]
pub struct Targets {
    // An `Arc<[_]>` inside the lock so a reader holds the lock only to clone a pointer, and a
    // snapshot it took stays valid, unchanged, after a `set`.
    current: Arc<RwLock<Arc<[SocketAddr]>>>,
}

impl Targets {
    /// A list that starts as `addrs`, in this order; it changes only if someone calls
    /// [`Targets::set`] on it or one of its clones.
    pub fn fixed(addrs: Vec<SocketAddr>) -> Targets {
        Targets {
            current: Arc::new(RwLock::new(addrs.into())),
        }
    }

    /// Replaces the list for every clone; true if it differs from the previous one (same
    /// addresses in the same order count as unchanged, so followers may call this blindly).
    pub fn set(&self, addrs: Vec<SocketAddr>) -> bool {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if **current == *addrs {
            return false;
        }
        *current = addrs.into();
        true
    }

    /// The list as of now; later [`Targets::set`] calls do not change it.
    pub fn snapshot(&self) -> Arc<[SocketAddr]> {
        // A panic cannot leave the list half-written: `set` replaces one pointer.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl From<Vec<SocketAddr>> for Targets {
    fn from(addrs: Vec<SocketAddr>) -> Targets {
        Targets::fixed(addrs)
    }
}

impl fmt::Debug for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Targets").field(&self.snapshot()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn clones_share_one_list_and_snapshots_do_not_move() {
        let targets = Targets::fixed(vec![addr(1), addr(2)]);
        let handle = targets.clone();
        let before = targets.snapshot();
        assert!(handle.set(vec![addr(3)]));
        assert_eq!(*targets.snapshot(), [addr(3)]);
        assert_eq!(*before, [addr(1), addr(2)]);
    }

    #[test]
    fn set_says_whether_anything_changed() {
        let targets = Targets::fixed(vec![addr(1), addr(2)]);
        assert!(!targets.set(vec![addr(1), addr(2)]));
        assert!(targets.set(vec![addr(2), addr(1)]));
        assert!(targets.set(vec![]));
        assert!(!targets.set(vec![]));
    }

    #[test]
    fn empty_lists_are_allowed() {
        assert!(Targets::default().snapshot().is_empty());
        let targets = Targets::fixed(vec![]);
        assert!(targets.snapshot().is_empty());
        assert!(targets.set(vec![addr(1)]));
        assert_eq!(format!("{targets:?}"), "Targets([127.0.0.1:1])");
    }
}
