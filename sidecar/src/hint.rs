//! Reconnect hints in the agents' own protocol, sent on a planned close just before TLS
//! close_notify, so that an agent that understands them reconnects elsewhere at once instead of
//! treating the close as a failure.
//!
//! - MQTT 5: an agent whose CONNECT says protocol level 5 gets `DISCONNECT` with reason code
//!   0x9C ("use another server"). The broker behind the sidecar still sees an unannounced
//!   close, so the agent's Last Will waits its Will Delay Interval, and a reconnect within it
//!   (which the hint makes immediate) cancels the will.
//! - WebSocket: an agent whose upgrade the gateway accepted (`HTTP/1.1 101`) gets a close frame
//!   with code 1012 ("service restart"), which WebSocket clients take as "reconnect".
//!
//! To insert a packet without corrupting the stream, this module follows the gateway→agent byte
//! stream's framing (MQTT: fixed header and remaining length; WebSocket: the HTTP response head,
//! then each frame's header and length; nothing more) and sends the hint only between two
//! packets or frames (RFC 6455 lets a control frame come between the fragments of a message).
//! Whenever it is unsure — a packet half-forwarded, a write that was interrupted, bytes it
//! cannot follow, an MQTT 3.1.1 agent (which has no server DISCONNECT), an upgrade the gateway
//! refused — it sends nothing, and the close is close_notify alone, as for any TCP protocol.
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
    /// WebSocket: a close frame 1012 to agents whose upgrade the gateway accepted.
    Websocket,
    /// Either, told apart by the agent's first bytes (an MQTT CONNECT, or an HTTP `GET`).
    Auto,
}

/// MQTT 5 DISCONNECT: type 14, remaining length 2, reason 0x9C (Use another server), no
/// properties.
pub const MQTT5_USE_ANOTHER_SERVER: [u8; 4] = [0xE0, 0x02, 0x9C, 0x00];

/// Longest `--mqtt-server-reference` accepted (a host list, not a document).
pub const MAX_SERVER_REFERENCE: usize = 1024;

/// The MQTT 5 DISCONNECT 0x9C to send: with a Server Reference property (0x1C, where the
/// agent should go, e.g. another region's address) when one is configured.
pub fn mqtt5_disconnect(server_reference: Option<&str>) -> Vec<u8> {
    let Some(reference) = server_reference else {
        return MQTT5_USE_ANOTHER_SERVER.to_vec();
    };
    let len = reference.len().min(MAX_SERVER_REFERENCE);
    let properties = 1 + 2 + len;
    let mut packet = vec![0xE0];
    put_varint(&mut packet, 1 + varint_len(properties) + properties);
    packet.push(0x9C);
    put_varint(&mut packet, properties);
    packet.push(0x1C);
    packet.extend_from_slice(&(len as u16).to_be_bytes());
    packet.extend_from_slice(&reference.as_bytes()[..len]);
    packet
}

/// Checks a `--mqtt-server-reference`: an MQTT UTF-8 string (no U+0000), not empty, at most
/// [`MAX_SERVER_REFERENCE`] bytes.
pub fn parse_server_reference(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > MAX_SERVER_REFERENCE {
        return Err(format!("must be 1 to {MAX_SERVER_REFERENCE} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(text.to_owned())
}

fn varint_len(mut value: usize) -> usize {
    let mut n = 1;
    while value >= 128 {
        value /= 128;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Which reconnect hint an agent gets on a planned close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// MQTT 5 DISCONNECT 0x9C ([`mqtt5_disconnect`]).
    Mqtt5,
    /// WebSocket close 1012 ([`WEBSOCKET_SERVICE_RESTART`]).
    WebSocket,
}
/// WebSocket close frame from a server (FIN, opcode 8, unmasked, 2 bytes): code 1012,
/// Service Restart.
pub const WEBSOCKET_SERVICE_RESTART: [u8; 4] = [0x88, 0x02, 0x03, 0xF4];

/// The status line a gateway accepts a WebSocket upgrade with.
const SWITCHING_PROTOCOLS: &[u8; 12] = b"HTTP/1.1 101";
const END_OF_HEAD: &[u8; 4] = b"\r\n\r\n";

/// What the agent's first bytes said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agent {
    /// Not enough bytes yet.
    Unknown,
    /// An MQTT CONNECT with this protocol level (4: 3.1.1, 5: MQTT 5).
    Mqtt(u8),
    /// An HTTP request: a WebSocket once the gateway answers 101.
    WebSocket,
    /// Anything else: no hint ever.
    Other,
}

/// Where the gateway→agent stream is in its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// Between packets or frames: a hint may be inserted here.
    Boundary,
    /// MQTT: reading the remaining-length varint, its value so far and bytes read.
    MqttLength { value: u32, read: u8 },
    /// WebSocket: the HTTP response head; status-line bytes checked, `\r\n\r\n` bytes matched.
    HttpHead { checked: u8, matched: u8 },
    /// WebSocket: the frame's first byte was read; the second (mask bit, length) is next.
    WsSecond,
    /// WebSocket: reading an extended length (`left` bytes to go), then a mask key if masked.
    WsLength { left: u8, value: u64, masked: bool },
    /// WebSocket: reading the masking key (`left` bytes), then the body.
    WsMask { left: u8, body: u64 },
    /// Inside a packet's or frame's body, this many bytes to go.
    Body(u64),
    /// Not following any more (bytes it cannot follow or an interrupted write): never insert.
    Lost,
}

/// One connection's view of both directions, as far as hints need it.
#[derive(Debug)]
pub struct Hints {
    protocol: Protocol,
    agent: Agent,
    first: [u8; 12],
    first_len: u8,
    gateway: Frame,
}

impl Hints {
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
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
        self.agent = read_first(&self.first[..self.first_len as usize], self.protocol);
        if self.agent == Agent::WebSocket {
            self.gateway = Frame::HttpHead {
                checked: 0,
                matched: 0,
            };
        }
    }

    /// Bytes the gateway sent, once they were all written to the agent.
    pub fn gateway_sent(&mut self, bytes: &[u8]) {
        match self.agent {
            Agent::Other => {}
            // The gateway spoke before the agent said what it is: nothing to follow.
            Agent::Unknown if !bytes.is_empty() => self.gateway = Frame::Lost,
            Agent::Unknown => {}
            Agent::Mqtt(_) | Agent::WebSocket => {
                let websocket = self.agent == Agent::WebSocket;
                for &byte in bytes {
                    self.gateway = next(self.gateway, byte, websocket);
                    if self.gateway == Frame::Lost {
                        return;
                    }
                }
            }
        }
    }

    /// A write toward the agent was interrupted: how much of it arrived is unknown.
    pub fn lost(&mut self) {
        self.gateway = Frame::Lost;
    }

    /// What to send the agent before close_notify on a planned close: the hint, if the agent
    /// understands one and the stream is between packets.
    pub fn on_planned_close(&self) -> Option<Hint> {
        if self.gateway != Frame::Boundary {
            return None;
        }
        match self.agent {
            Agent::Mqtt(5) => Some(Hint::Mqtt5),
            Agent::WebSocket => Some(Hint::WebSocket),
            _ => None,
        }
    }

    /// The agent's protocol as seen so far, for logs and metrics.
    pub fn agent_protocol(&self) -> &'static str {
        match self.agent {
            Agent::Mqtt(5) => "mqtt5",
            Agent::Mqtt(_) => "mqtt",
            Agent::WebSocket => "websocket",
            Agent::Unknown | Agent::Other => "tcp",
        }
    }
}

/// One byte further in the gateway→agent framing.
fn next(frame: Frame, byte: u8, websocket: bool) -> Frame {
    match frame {
        Frame::Lost => Frame::Lost,
        Frame::Boundary if websocket => Frame::WsSecond,
        Frame::Boundary => Frame::MqttLength { value: 0, read: 0 },
        Frame::MqttLength { value, read } => {
            let value = value | (u32::from(byte & 0x7F) << (7 * u32::from(read)));
            if byte & 0x80 == 0 {
                body(u64::from(value))
            } else if read + 1 >= 4 {
                Frame::Lost
            } else {
                Frame::MqttLength {
                    value,
                    read: read + 1,
                }
            }
        }
        Frame::HttpHead { checked, matched } => {
            if usize::from(checked) < SWITCHING_PROTOCOLS.len()
                && byte != SWITCHING_PROTOCOLS[usize::from(checked)]
            {
                // Not an accepted upgrade: the stream is plain HTTP, not followed.
                return Frame::Lost;
            }
            let checked = checked.saturating_add(1);
            let matched = if byte == END_OF_HEAD[usize::from(matched)] {
                matched + 1
            } else if byte == END_OF_HEAD[0] {
                1
            } else {
                0
            };
            if usize::from(matched) == END_OF_HEAD.len() {
                Frame::Boundary
            } else {
                Frame::HttpHead { checked, matched }
            }
        }
        Frame::WsSecond => {
            let masked = byte & 0x80 != 0;
            match byte & 0x7F {
                126 => Frame::WsLength {
                    left: 2,
                    value: 0,
                    masked,
                },
                127 => Frame::WsLength {
                    left: 8,
                    value: 0,
                    masked,
                },
                len => after_length(u64::from(len), masked),
            }
        }
        Frame::WsLength {
            left,
            value,
            masked,
        } => {
            let value = (value << 8) | u64::from(byte);
            if left == 1 {
                after_length(value, masked)
            } else {
                Frame::WsLength {
                    left: left - 1,
                    value,
                    masked,
                }
            }
        }
        Frame::WsMask { left: 1, body: len } => body(len),
        Frame::WsMask { left, body } => Frame::WsMask {
            left: left - 1,
            body,
        },
        Frame::Body(1) => Frame::Boundary,
        Frame::Body(left) => Frame::Body(left - 1),
    }
}

fn body(len: u64) -> Frame {
    if len == 0 {
        Frame::Boundary
    } else {
        Frame::Body(len)
    }
}

fn after_length(len: u64, masked: bool) -> Frame {
    if masked {
        Frame::WsMask { left: 4, body: len }
    } else {
        body(len)
    }
}

/// Reads what the agent speaks from its stream's first bytes: an MQTT CONNECT's protocol
/// level (fixed header 0x10, the remaining length in 1–4 bytes, the protocol name "MQTT"
/// length-prefixed, the level), or an HTTP `GET` (a WebSocket upgrade, once the gateway
/// accepts it), as far as `protocol` allows.
fn read_first(bytes: &[u8], protocol: Protocol) -> Agent {
    let Some(&first) = bytes.first() else {
        return Agent::Unknown;
    };
    let mqtt = matches!(protocol, Protocol::Mqtt | Protocol::Auto);
    let websocket = matches!(protocol, Protocol::Websocket | Protocol::Auto);
    if first == b'G' && websocket {
        let get = b"GET ";
        let seen = bytes.len().min(get.len());
        return if bytes[..seen] != get[..seen] {
            Agent::Other
        } else if seen < get.len() {
            Agent::Unknown
        } else {
            Agent::WebSocket
        };
    }
    if first != 0x10 || !mqtt {
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

    /// Reads an MQTT variable byte integer at `at`: (value, bytes used).
    fn varint(bytes: &[u8], at: usize) -> (usize, usize) {
        let (mut value, mut scale, mut i) = (0, 1, at);
        loop {
            value += (bytes[i] & 0x7F) as usize * scale;
            scale *= 128;
            i += 1;
            if bytes[i - 1] & 0x80 == 0 {
                return (value, i - at);
            }
        }
    }

    #[test]
    fn the_disconnect_carries_a_server_reference_when_one_is_configured() {
        assert_eq!(mqtt5_disconnect(None), MQTT5_USE_ANOTHER_SERVER);
        for reference in ["eu-2.presence.example:8883", &"x".repeat(200)] {
            let packet = mqtt5_disconnect(Some(reference));
            assert_eq!(packet[0], 0xE0);
            let (remaining, used) = varint(&packet, 1);
            assert_eq!(remaining, packet.len() - 1 - used, "remaining length");
            let body = &packet[1 + used..];
            assert_eq!(body[0], 0x9C);
            let (properties, used) = varint(body, 1);
            let props = &body[1 + used..];
            assert_eq!(props.len(), properties);
            assert_eq!(props[0], 0x1C, "Server Reference");
            let len = u16::from_be_bytes([props[1], props[2]]) as usize;
            assert_eq!(&props[3..3 + len], reference.as_bytes());
        }
        assert!(parse_server_reference("eu-2.presence.example:8883").is_ok());
        assert!(parse_server_reference("").is_err());
        assert!(parse_server_reference("a\u{0}b").is_err());
        assert!(parse_server_reference(&"x".repeat(MAX_SERVER_REFERENCE + 1)).is_err());
    }

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
        assert_eq!(hints.on_planned_close(), Some(Hint::Mqtt5));
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

        let mut http = Hints::new(Protocol::Mqtt);
        http.agent_sent(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            http.on_planned_close(),
            None,
            "mqtt does not follow WebSocket"
        );

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

        let mut early = Hints::new(Protocol::Auto);
        early.gateway_sent(b"220 hello\r\n");
        early.agent_sent(&connect(5));
        assert_eq!(early.on_planned_close(), None, "the gateway spoke first");
    }

    /// A server→client WebSocket frame (unmasked) with `len` payload bytes.
    fn ws_frame(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => frame.push(len as u8),
            126..=0xFFFF => {
                frame.push(126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                frame.push(127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend(std::iter::repeat_n(b'x', len));
        frame
    }

    const ACCEPTED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

    #[test]
    fn a_websocket_agent_gets_close_1012_between_frames_only() {
        let mut hints = Hints::new(Protocol::Auto);
        hints.agent_sent(b"GET /presence HTTP/1.1\r\nUpgrade: websocket\r\n");
        assert_eq!(hints.agent_protocol(), "websocket");
        for (i, byte) in ACCEPTED.iter().enumerate() {
            assert_eq!(hints.on_planned_close(), None, "inside the head, byte {i}");
            hints.gateway_sent(&[*byte]);
        }
        assert_eq!(hints.on_planned_close(), Some(Hint::WebSocket));
        // Every length encoding, a fragmented message and a masked frame, byte by byte.
        let mut masked = vec![0x82, 0x80 | 3, 1, 2, 3, 4];
        masked.extend_from_slice(b"abc");
        let frames = [
            ws_frame(1, true, 5),
            ws_frame(2, true, 300),
            ws_frame(2, true, 70_000),
            ws_frame(1, false, 10),
            ws_frame(0, true, 0),
            masked,
        ];
        for frame in frames {
            for (i, byte) in frame.iter().enumerate() {
                hints.gateway_sent(&[*byte]);
                let done = i + 1 == frame.len();
                assert_eq!(
                    hints.on_planned_close().is_some(),
                    done,
                    "byte {i} of {}",
                    frame.len()
                );
            }
        }
        // Whole frames in one read.
        hints.gateway_sent(&[ws_frame(1, true, 3), ws_frame(9, true, 0)].concat());
        assert!(hints.on_planned_close().is_some());
    }

    #[test]
    fn no_close_frame_when_the_gateway_refused_the_upgrade_or_for_plain_http() {
        let mut refused = Hints::new(Protocol::Websocket);
        refused.agent_sent(b"GET / HTTP/1.1\r\n");
        refused.gateway_sent(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert_eq!(refused.on_planned_close(), None);

        let mut post = Hints::new(Protocol::Websocket);
        post.agent_sent(b"POST / HTTP/1.1\r\n");
        assert_eq!(post.agent_protocol(), "tcp");
        assert_eq!(post.on_planned_close(), None);

        let mut mqtt_on_websocket = Hints::new(Protocol::Websocket);
        mqtt_on_websocket.agent_sent(&connect(5));
        assert_eq!(mqtt_on_websocket.on_planned_close(), None);
    }
}
