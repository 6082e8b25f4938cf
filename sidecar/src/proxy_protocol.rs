//! PROXY protocol version 2 header, so the gateway sees the agent's address rather than the
//! sidecar's loopback one. Only the `PROXY` command over TCP is produced.

use std::net::SocketAddr;

const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header for a connection from `source` (the agent) to `destination` (our listener).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            // Mixed families are reported as IPv6, mapping any IPv4 side.
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                SocketAddr::V6(v6) => *v6.ip(),
            };
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_layout() {
        let h = v2_header(
            "10.1.2.3:40000".parse().unwrap(),
            "127.0.0.1:8443".parse().unwrap(),
        );
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[10, 1, 2, 3]);
        assert_eq!(&h[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 8443);
    }

    #[test]
    fn ipv6_header_layout() {
        let h = v2_header(
            "[::1]:1000".parse().unwrap(),
            "127.0.0.1:2000".parse().unwrap(),
        );
        assert_eq!(h.len(), 52);
        assert_eq!(h[13], 0x21);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        assert_eq!(h[31], 1);
        assert_eq!(u16::from_be_bytes([h[48], h[49]]), 1000);
    }

    /// What a PROXY v2 reader (HAProxy's, the gateway's) would take from the header.
    fn read_back(h: &[u8]) -> (SocketAddr, SocketAddr) {
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21, "version 2, PROXY");
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        assert_eq!(h.len(), 16 + len, "the length covers the addresses exactly");
        let port = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
        match h[13] {
            0x11 => {
                let ip =
                    |at: usize| std::net::Ipv4Addr::new(h[at], h[at + 1], h[at + 2], h[at + 3]);
                (
                    SocketAddr::new(ip(16).into(), port(24)),
                    SocketAddr::new(ip(20).into(), port(26)),
                )
            }
            0x21 => {
                let ip = |at: usize| {
                    let octets: [u8; 16] = h[at..at + 16].try_into().unwrap();
                    std::net::Ipv6Addr::from(octets)
                };
                (
                    SocketAddr::new(ip(16).into(), port(48)),
                    SocketAddr::new(ip(32).into(), port(50)),
                )
            }
            other => panic!("family/transport {other:#x}"),
        }
    }

    /// The address as the header carries it: no flow label nor scope, IPv4 mapped when the
    /// header is IPv6.
    fn canonical(a: SocketAddr, v6: bool) -> SocketAddr {
        match a {
            SocketAddr::V4(v4) if v6 => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            other => SocketAddr::new(other.ip(), other.port()),
        }
    }

    proptest::proptest! {
        /// Any pair of addresses reads back as written (IPv4 mapped into IPv6 when the two
        /// families differ).
        #[test]
        fn every_header_reads_back_as_the_addresses(
            source in proptest::prelude::any::<SocketAddr>(),
            destination in proptest::prelude::any::<SocketAddr>(),
        ) {
            let h = v2_header(source, destination);
            let both_v4 = source.is_ipv4() && destination.is_ipv4();
            let (s, d) = read_back(&h);
            proptest::prop_assert_eq!(s, canonical(source, !both_v4));
            proptest::prop_assert_eq!(d, canonical(destination, !both_v4));
        }
    }
}
