//! Pod IPs: one loopback address per pod, from a configurable 127.x.0.0/16.
//!
//! Pods share the host network namespace, so each binds its own address (`status.podIP`,
//! e.g. `--listen=$(POD_IP):8443`) and two pods can use the same port. Addresses are handed
//! out round-robin and an address returns to the pool only when its pod is gone, so a
//! recreated pod does not inherit a connection meant for its predecessor right away. The
//! first and last host of each /24 (x.y.z.0, x.y.z.255) and 127.x.0.1 are never used.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::error::{Error, Result};

/// Allocator over `127.<second>.0.0/16`.
#[derive(Debug)]
pub struct PodIps {
    second: u8,
    used: BTreeSet<u16>,
    cursor: u16,
}

impl PodIps {
    /// Parses `127.N` or `127.N.0.0/16` (N in 1..=255).
    pub fn new(subnet: &str) -> Result<PodIps> {
        let bad = || {
            Error::Invalid(format!(
                "pod subnet {subnet:?}: expected 127.N.0.0/16 with N in 1..=255"
            ))
        };
        let base = subnet.trim_end_matches("/16").trim_end_matches(".0.0");
        let mut parts = base.split('.');
        if parts.next() != Some("127") {
            return Err(bad());
        }
        let second: u8 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if second == 0 || parts.next().is_some() {
            return Err(bad());
        }
        Ok(PodIps {
            second,
            used: BTreeSet::new(),
            cursor: 1,
        })
    }

    fn usable(n: u16) -> bool {
        let last = (n & 0xff) as u8;
        n > 1 && last != 0 && last != 255
    }

    /// The next free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr> {
        for _ in 0..=u16::MAX as u32 {
            self.cursor = self.cursor.wrapping_add(1);
            let n = self.cursor;
            if Self::usable(n) && !self.used.contains(&n) {
                self.used.insert(n);
                let [a, b] = n.to_be_bytes();
                return Ok(Ipv4Addr::new(127, self.second, a, b));
            }
        }
        Err(Error::Invalid("pod subnet exhausted".into()))
    }

    /// Takes `ip` if it is in this subnet, usable and free (a pod that already has it, e.g.
    /// after a kubelet restart, keeps its address: a pod's IP never changes).
    pub fn reserve(&mut self, ip: Ipv4Addr) -> bool {
        let o = ip.octets();
        let n = u16::from_be_bytes([o[2], o[3]]);
        if o[0] != 127 || o[1] != self.second || !Self::usable(n) {
            return false;
        }
        self.used.insert(n)
    }

    /// Returns `ip` to the pool (its pod is gone).
    pub fn release(&mut self, ip: Ipv4Addr) {
        let o = ip.octets();
        if o[0] == 127 && o[1] == self.second {
            self.used.remove(&u16::from_be_bytes([o[2], o[3]]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_round_robin_and_reused_only_after_release() {
        let mut ips = PodIps::new("127.1.0.0/16").unwrap();
        let a = ips.allocate().unwrap();
        let b = ips.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(127, 1, 0, 2));
        assert_eq!(b, Ipv4Addr::new(127, 1, 0, 3));
        ips.release(a);
        assert_eq!(ips.allocate().unwrap(), Ipv4Addr::new(127, 1, 0, 4));
        let all: BTreeSet<_> = (0..1000).map(|_| ips.allocate().unwrap()).collect();
        assert_eq!(all.len(), 1000);
        assert!(!all.contains(&b));
        assert!(all
            .iter()
            .all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255));
        assert!(ips.reserve(Ipv4Addr::new(127, 1, 200, 7)));
        assert!(!ips.reserve(Ipv4Addr::new(127, 1, 200, 7)), "already taken");
        assert!(!ips.reserve(Ipv4Addr::new(127, 2, 0, 7)), "other subnet");
        assert!(PodIps::new("10.0.0.0/16").is_err());
        assert!(PodIps::new("127.0").is_err());
    }
}
