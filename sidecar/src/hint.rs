//! Reconnect hints in the agents' own protocol, sent on a planned close just before TLS
//! close_notify, so that an agent that understands them reconnects elsewhere at once instead of
//! treating the close as a failure.
//!
//! Today: MQTT 5. An agent whose CONNECT says protocol level 5 gets `DISCONNECT` with reason
//! code 0x9C ("use another server") when a drain closes it. The broker behind the sidecar still
//! sees an unannounced close, so the agent's Last Will waits its Will Delay Interval, and a
//! reconnect within it (which the hint makes immediate) cancels the will.
//!
//! To insert a packet without corrupting the stream, this module follows the gateway→agent byte
//! stream's MQTT framing (fixed header and remaining length, nothing more) and sends the hint
//! only at a packet boundary. Whenever it is unsure — a packet half-forwarded, a write that was
//! interrupted, bytes that are not MQTT, an MQTT 3.1.1 agent (which has no server DISCONNECT) —
//! it sends nothing, and the close is close_notify alone, as for any TCP protocol.
//!
//! It never changes, delays or buffers the bytes it watches (it keeps at most the first 12 bytes
//! of the agent's stream), and never does I/O: the proxy writes what it returns.

/// The agents' protocol, as configured (`--protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Opaque bytes: close_notify alone.
    Tcp,
    /// MQTT: a DISCONNECT 0x9C to MQTT 5 agents.
    Mqtt,
    /// MQTT when the agent's first bytes are an MQTT CONNECT, otherwise opaque. (With MQTT
    /// the only protocol followed so far, `mqtt` does the same: a non-MQTT agent gets no hint.)
    Auto,
}

/// MQTT 5 DISCONNECT: type 14, remaining length 2, reason 0x9C (Use another server), no
/// properties.
pub const MQTT5_USE_ANOTHER_SERVER: [u8; 4] = [0xE0, 0x02, 0x9C, 0x00];

/// What the agent's first packet said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agent {
    /// Not enough bytes yet.
    Unknown,
    /// An MQTT CONNECT with this protocol level (4: 3.1.1, 5: MQTT 5).
    Mqtt(u8),
    /// Anything else: no hint ever.
    Other,
}

/// Where the gateway→agent stream is in MQTT's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// Between packets: a packet may be inserted here.
    Boundary,
    /// Reading the remaining-length varint: its value so far and how many bytes were read.
    Length { value: u32, read: u8 },
    /// Inside a packet's body, this many bytes to go.
    Body(u32),
    /// Not following any more (malformed bytes or an interrupted write): never insert.
    Lost,
}

/// One connection's view of both directions, as far as hints need it.
#[derive(Debug)]
pub struct Hints {
    agent: Agent,
    first: [u8; 12],
    first_len: u8,
    gateway: Frame,
}

impl Hints {
    pub fn new(protocol: Protocol) -> Self {
        Self {
            agent: if protocol == Protocol::Tcp {
                Agent::Other
            } else {
                Agent::Unknown
            },
            first: [0; 12],
            first_len: 0,
            gateway: Frame::Boundary,
        }
    }

    /// Bytes the agent sent (before they are forwarded).
    pub fn agent_sent(&mut self, bytes: &[u8]) {
        if self.agent != Agent::Unknown {
            return;
        }
        let have = self.first_len as usize;
        let take = (self.first.len() - have).min(bytes.len());
        self.first[have..have + take].copy_from_slice(&bytes[..take]);
        self.first_len += take as u8;
        self.agent = read_connect(&self.first[..self.first_len as usize]);
    }

    /// Bytes the gateway sent, once they were all written to the agent.
    pub fn gateway_sent(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.gateway = match self.gateway {
                Frame::Lost => return,
                Frame::Boundary => Frame::Length { value: 0, read: 0 },
                Frame::Length { value, read } => {
                    let value = value | (u32::from(byte & 0x7F) << (7 * u32::from(read)));
                    if byte & 0x80 == 0 {
                        if value == 0 {
                            Frame::Boundary
                        } else {
                            Frame::Body(value)
                        }
                    } else if read + 1 >= 4 {
                        Frame::Lost
                    } else {
                        Frame::Length {
                            value,
                            read: read + 1,
                        }
                    }
                }
                Frame::Body(1) => Frame::Boundary,
                Frame::Body(left) => Frame::Body(left - 1),
            };
        }
    }

    /// A write toward the agent was interrupted: how much of it arrived is unknown.
    pub fn lost(&mut self) {
        self.gateway = Frame::Lost;
    }

    /// What to send the agent before close_notify on a planned close: the hint, if the agent
    /// understands one and the stream is between packets.
    pub fn on_planned_close(&self) -> Option<&'static [u8]> {
        (self.agent == Agent::Mqtt(5) && self.gateway == Frame::Boundary)
            .then_some(&MQTT5_USE_ANOTHER_SERVER[..])
    }

    /// The agent's protocol as seen so far, for logs and metrics.
    pub fn agent_protocol(&self) -> &'static str {
        match self.agent {
            Agent::Mqtt(5) => "mqtt5",
            Agent::Mqtt(_) => "mqtt",
            Agent::Unknown | Agent::Other => "tcp",
        }
    }
}

/// Reads an MQTT CONNECT's protocol level from a stream's first bytes: fixed header 0x10, the
/// remaining length (1–4 bytes), the protocol name "MQTT" (length-prefixed), the level.
fn read_connect(bytes: &[u8]) -> Agent {
    let Some(&first) = bytes.first() else {
        return Agent::Unknown;
    };
    if first != 0x10 {
        return Agent::Other;
    }
    let mut at = 1;
    loop {
        match bytes.get(at) {
            None => return Agent::Unknown,
            Some(b) if b & 0x80 == 0 => break,
            Some(_) if at >= 4 => return Agent::Other,
            Some(_) => at += 1,
        }
    }
    let name = &bytes[at + 1..];
    let want = [0x00, 0x04, b'M', b'Q', b'T', b'T'];
    let seen = name.len().min(want.len());
    if name[..seen] != want[..seen] {
        return Agent::Other;
    }
    match name.get(want.len()) {
        None => Agent::Unknown,
        Some(&level) => Agent::Mqtt(level),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An MQTT CONNECT of the given level (body beyond the level is filler).
    fn connect(level: u8) -> Vec<u8> {
        let mut packet = vec![0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', level];
        packet.extend_from_slice(&[0x02, 0x00, 0x3C, 0x00, 0x00]);
        packet
    }

    #[test]
    fn an_mqtt5_agent_between_packets_gets_the_hint_even_when_bytes_arrive_one_by_one() {
        let mut hints = Hints::new(Protocol::Mqtt);
        for byte in connect(5) {
            hints.agent_sent(&[byte]);
        }
        assert_eq!(hints.agent_protocol(), "mqtt5");
        // CONNACK, then a PUBLISH with a two-byte remaining length (200), byte by byte.
        hints.gateway_sent(&[0x20, 0x03, 0x00, 0x00, 0x00]);
        assert_eq!(
            hints.on_planned_close(),
            Some(&MQTT5_USE_ANOTHER_SERVER[..])
        );
        let mut publish = vec![0x30, 0xC8, 0x01];
        publish.extend(std::iter::repeat_n(7u8, 200));
        for (i, byte) in publish.iter().enumerate() {
            hints.gateway_sent(&[*byte]);
            let done = i + 1 == publish.len();
            assert_eq!(hints.on_planned_close().is_some(), done, "after byte {i}");
        }
        // PINGRESP: zero remaining length.
        hints.gateway_sent(&[0xD0, 0x00]);
        assert!(hints.on_planned_close().is_some());
    }

    #[test]
    fn no_hint_for_mqtt_311_other_protocols_plain_tcp_or_a_lost_stream() {
        let mut v311 = Hints::new(Protocol::Mqtt);
        v311.agent_sent(&connect(4));
        assert_eq!(v311.on_planned_close(), None);

        let mut http = Hints::new(Protocol::Auto);
        http.agent_sent(b"GET / HTTP/1.1\r\n");
        assert_eq!(http.on_planned_close(), None);

        let mut tcp = Hints::new(Protocol::Tcp);
        tcp.agent_sent(&connect(5));
        assert_eq!(tcp.on_planned_close(), None);

        let mut lost = Hints::new(Protocol::Auto);
        lost.agent_sent(&connect(5));
        assert!(lost.on_planned_close().is_some());
        lost.lost();
        assert_eq!(lost.on_planned_close(), None);

        let mut malformed = Hints::new(Protocol::Mqtt);
        malformed.agent_sent(&connect(5));
        malformed.gateway_sent(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert_eq!(malformed.on_planned_close(), None);

        let mut not_yet = Hints::new(Protocol::Mqtt);
        not_yet.agent_sent(&connect(5)[..5]);
        assert_eq!(
            not_yet.on_planned_close(),
            None,
            "the level is not known yet"
        );
    }
}
