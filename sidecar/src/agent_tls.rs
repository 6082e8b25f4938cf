//! One agent's TLS session over its TCP socket, built on rustls's unbuffered API so that an
//! idle connection holds no buffer at all.
//!
//! Why not `tokio_rustls`: a buffered `rustls::ServerConnection` keeps a 4 KiB receive buffer
//! for its whole life once it has read anything, and an agent is idle for days. Here the
//! received bytes live in a buffer this module owns: allocated when the socket is readable,
//! freed as soon as every complete record in it has been decrypted. Outgoing records are
//! likewise kept only until the socket has taken them.
//!
//! Owns: the handshake, decrypting what the agent sent, encrypting what the gateway sent,
//! close_notify, and (when asked) the SNI the agent sent. Never: deadlines, drains or any proxy
//! decision (the caller's, see `proxy`), and never a copy of the plaintext beyond the
//! caller's own buffer.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use rustls::server::{Acceptor, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{CommonState, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How much one read from the socket may take: one whole TLS record (header, 16 KiB of
/// plaintext, the AEAD's expansion) and a little more.
const READ_CHUNK: usize = 17 * 1024;

/// Room tried first when encoding a record; a record that needs more says so and is retried.
const RECORD_OVERHEAD: usize = 64;

/// An established TLS session with one agent.
pub struct AgentTls {
    tcp: TcpStream,
    /// Boxed: an established session is ~1 KiB that the connection's task would otherwise
    /// carry inline (and, across nested futures, more than once).
    session: Box<UnbufferedServerConnection>,
    /// Received bytes not yet processed: at most one partial record between reads, and no
    /// allocation when there is none.
    incoming: Vec<u8>,
    /// Encoded records the socket has not taken yet (`sent` of them went out).
    outgoing: Vec<u8>,
    sent: usize,
    /// Application data decrypted outside a read (it arrived with the handshake's last
    /// flight), for the next read.
    pending_plaintext: Vec<u8>,
    /// The agent sent close_notify.
    peer_closed: bool,
    /// The agent's TCP side ended.
    eof: bool,
    sni: Option<String>,
}

/// Where processing the received bytes left the session.
#[derive(Debug, PartialEq)]
enum Step {
    /// The handshake waits for more bytes from the agent.
    NeedData,
    /// Established and every complete record is processed.
    Established,
    /// Both sides sent close_notify.
    Closed,
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl AgentTls {
    /// Runs the server side of the handshake on `tcp`. The caller bounds it in time. With
    /// `want_sni`, the ClientHello is also read by rustls's `Acceptor` for the server name
    /// (the unbuffered server does not keep it): a second parse of one message, paid only
    /// when something (lifecycle events) will use the name.
    pub async fn accept(
        config: Arc<ServerConfig>,
        tcp: TcpStream,
        want_sni: bool,
    ) -> io::Result<AgentTls> {
        let session = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut tls = AgentTls {
            tcp,
            session: Box::new(session),
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            pending_plaintext: Vec::new(),
            peer_closed: false,
            eof: false,
            sni: None,
        };
        let mut hello = want_sni.then(Acceptor::default);
        loop {
            let mut plaintext = std::mem::take(&mut tls.pending_plaintext);
            let step = tls.process(&mut plaintext);
            tls.pending_plaintext = plaintext;
            let step = match step {
                Ok(step) => step,
                Err(e) => {
                    tls.send_alert();
                    return Err(tls_error(e));
                }
            };
            tls.flush().await?;
            match step {
                Step::Established => return Ok(tls),
                Step::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the handshake",
                    ))
                }
                Step::NeedData => {
                    if tls.eof || tls.peer_closed {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    tls.tcp.readable().await?;
                    let read = tls.fill()?;
                    if let Some(reader) = hello.as_mut() {
                        let fresh = &tls.incoming[tls.incoming.len() - read..];
                        if let Some(sni) = read_sni(reader, fresh) {
                            tls.sni = sni;
                            hello = None;
                        }
                    }
                }
            }
        }
    }

    /// The negotiated session: handshake kind, peer certificates.
    pub fn session(&self) -> &CommonState {
        &self.session
    }

    /// The server name the agent asked for, if it sent one.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The agent's socket, to wait for readiness on.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Reads and decrypts what the socket has now, without waiting, appending the plaintext
    /// to `out`. `None`: nothing was ready. `Some(Ok(0))`: the agent sent close_notify.
    /// `UnexpectedEof`: its TCP side ended without one.
    pub fn read_ready(&mut self, out: &mut Vec<u8>) -> Option<io::Result<usize>> {
        let before = out.len();
        if !self.pending_plaintext.is_empty() {
            out.append(&mut self.pending_plaintext);
            self.pending_plaintext = Vec::new();
        }
        loop {
            if self.peer_closed || self.eof {
                break;
            }
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            match self.process(out) {
                Ok(Step::Closed) => self.peer_closed = true,
                Ok(_) => {}
                Err(e) => return Some(Err(tls_error(e))),
            }
            if out.len() > before {
                break;
            }
        }
        // A key update the agent asked for, or an alert, goes out now if the socket takes it.
        let _ = self.try_flush();
        match out.len() - before {
            0 if self.peer_closed => Some(Ok(0)),
            0 if self.eof => Some(Err(io::ErrorKind::UnexpectedEof.into())),
            0 => None,
            n => Some(Ok(n)),
        }
    }

    /// Waits until something can be read, then reads it as [`AgentTls::read_ready`] does.
    pub async fn read(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            if let Some(read) = self.read_ready(out) {
                return read;
            }
            self.tcp.readable().await?;
        }
    }

    /// Encrypts `data` and waits until the socket has taken every record of it.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.encode_then(|traffic, spare| traffic.encrypt(data, spare))?;
        self.flush().await
    }

    /// Sends close_notify, then ends our TCP side (the agent may still send).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.encode_then(|traffic, spare| traffic.queue_close_notify(spare))?;
        self.flush().await?;
        self.tcp.shutdown().await
    }

    /// Reads from the socket into `incoming`, without waiting. `Ok(0)`: nothing ready or EOF
    /// (then `eof` is set).
    fn fill(&mut self) -> io::Result<usize> {
        // Room for one whole record beside what is already here, without `reserve`'s doubling:
        // a partial record left waiting must not hold twice a record's size.
        let room = READ_CHUNK.saturating_sub(self.incoming.len()).max(1024);
        self.incoming.reserve_exact(room);
        // Polled once rather than `try_read_buf`: a short read clears the socket's readiness,
        // so the next call returns at once instead of paying a read that finds nothing.
        let read = match poll_now(self.tcp.read_buf(&mut self.incoming)) {
            None => Ok(0),
            Some(Ok(0)) => {
                self.eof = true;
                Ok(0)
            }
            Some(read) => read,
        };
        self.release_incoming();
        read
    }

    /// Frees the receive buffer when it holds nothing: the idle state costs no buffer.
    fn release_incoming(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
    }

    /// Processes every complete record received, appending application data to `plaintext`
    /// and queueing whatever rustls must send into `outgoing`.
    fn process(&mut self, plaintext: &mut Vec<u8>) -> Result<Step, rustls::Error> {
        let result = loop {
            let UnbufferedStatus { mut discard, state } =
                self.session.process_tls_records(&mut self.incoming);
            let step = match state {
                Err(e) => Some(Err(e)),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plaintext.extend_from_slice(record.payload);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    match encode_into(&mut self.outgoing, |spare| data.encode(spare)) {
                        Ok(()) => None,
                        Err(e) => Some(Err(e)),
                    }
                }
                // Queued in order in `outgoing`, which every caller flushes.
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    None
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Ok(Step::NeedData)),
                Ok(ConnectionState::WriteTraffic(_)) => Some(Ok(Step::Established)),
                Ok(ConnectionState::Closed) => Some(Ok(Step::Closed)),
                // Early data is never accepted (max_early_data_size stays 0).
                Ok(_) => Some(Err(rustls::Error::General("unexpected early data".into()))),
            };
            self.incoming.drain(..discard);
            if let Some(step) = step {
                break step;
            }
        };
        self.release_incoming();
        result
    }

    /// Brings the session to where application data may be written, then lets `write`
    /// encode into `outgoing` (growing it as the record needs).
    fn encode_then(
        &mut self,
        mut write: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> io::Result<()> {
        // Whatever rustls has to say first (a key update, say) is queued ahead of the data.
        // The received bytes go along every time: rustls remembers positions in them.
        let mut pending = std::mem::take(&mut self.pending_plaintext);
        let step = self.process(&mut pending);
        self.pending_plaintext = pending;
        match step.map_err(tls_error)? {
            Step::Established => {}
            Step::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the TLS session is closed",
                ))
            }
            Step::NeedData => return Err(io::Error::other("the handshake is not complete")),
        }
        let UnbufferedStatus { state, .. } = self.session.process_tls_records(&mut self.incoming);
        let mut traffic = match state.map_err(tls_error)? {
            ConnectionState::WriteTraffic(traffic) => traffic,
            other => {
                return Err(io::Error::other(format!(
                    "cannot write in TLS state {other:?}"
                )))
            }
        };
        let start = self.outgoing.len();
        let mut room = RECORD_OVERHEAD;
        loop {
            self.outgoing.resize(start + room, 0);
            match write(&mut traffic, &mut self.outgoing[start..]) {
                Ok(n) => {
                    self.outgoing.truncate(start + n);
                    return Ok(());
                }
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                    if required_size > room =>
                {
                    room = required_size
                }
                Err(e) => {
                    self.outgoing.truncate(start);
                    return Err(io::Error::other(e.to_string()));
                }
            }
        }
    }

    /// Whether decrypted data waits for the next read although the socket may be quiet.
    pub fn has_pending_plaintext(&self) -> bool {
        !self.pending_plaintext.is_empty()
    }

    /// After a failed handshake step: the alert rustls queued goes out if the socket takes it
    /// now, so the agent learns why (a missing client certificate, no common version).
    fn send_alert(&mut self) {
        // Only while something is queued: another call would process the bad bytes again.
        while self.session.wants_write() {
            let Ok(ConnectionState::EncodeTlsData(mut data)) =
                self.session.process_tls_records(&mut self.incoming).state
            else {
                break;
            };
            if encode_into(&mut self.outgoing, |spare| data.encode(spare)).is_err() {
                break;
            }
        }
        let _ = self.try_flush();
    }

    /// Writes what the socket takes now, without waiting.
    fn try_flush(&mut self) -> io::Result<()> {
        while self.sent < self.outgoing.len() {
            match self.tcp.try_write(&self.outgoing[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(())
    }

    /// Waits until the socket has taken every encoded record.
    async fn flush(&mut self) -> io::Result<()> {
        loop {
            match self.try_flush() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Polls a future once, without waiting: a read that finds nothing is `None`, and the caller
/// waits for socket readiness instead, holding no buffer across the wait.
pub fn poll_now<F: Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// Feeds freshly received bytes to `reader`. `Some(name)` once the ClientHello is complete
/// (`Some(None)`: it named no server, or was malformed, which the session itself refuses);
/// `None` while more bytes are needed.
fn read_sni(reader: &mut Acceptor, mut fresh: &[u8]) -> Option<Option<String>> {
    while !fresh.is_empty() {
        match reader.read_tls(&mut fresh) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(None),
        }
        match reader.accept() {
            Ok(Some(accepted)) => {
                return Some(accepted.client_hello().server_name().map(str::to_owned))
            }
            Ok(None) => {}
            Err(_) => return Some(None),
        }
    }
    None
}

/// Appends one encoded handshake record or alert to `outgoing`, growing it as needed.
fn encode_into(
    outgoing: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let start = outgoing.len();
    let mut room = 4096;
    loop {
        outgoing.resize(start + room, 0);
        match encode(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > room =>
            {
                room = required_size
            }
            Err(e) => {
                outgoing.truncate(start);
                return Err(rustls::Error::General(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_fleet::certs::{Ca, Validity};
    use std::io::{Read, Write};

    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let ca = Ca::new("agent_tls test CA").unwrap();
        let server = ca
            .issue_server(&["localhost".into()], Validity::Current)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(ca.cert_der()))
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        (server.server_config().unwrap(), Arc::new(client))
    }

    /// A blocking rustls client that hands its TLS bytes to the socket one byte per write, so
    /// the session sees records (handshake ones included) arrive in pieces.
    struct TrickleClient {
        conn: rustls::ClientConnection,
        tcp: std::net::TcpStream,
    }

    impl TrickleClient {
        fn connect(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> Self {
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_nodelay(true).unwrap();
            let name = "localhost".try_into().unwrap();
            let conn = rustls::ClientConnection::new(config, name).unwrap();
            let mut client = TrickleClient { conn, tcp };
            loop {
                client.trickle();
                if !client.conn.is_handshaking() {
                    break;
                }
                client.conn.read_tls(&mut client.tcp).unwrap();
                client.conn.process_new_packets().unwrap();
            }
            client
        }

        fn trickle(&mut self) {
            let mut out = Vec::new();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut out).unwrap();
            }
            for byte in out.chunks(1) {
                self.tcp.write_all(byte).unwrap();
            }
        }

        fn send(&mut self, data: &[u8]) {
            self.conn.writer().write_all(data).unwrap();
            self.trickle();
        }

        /// Plaintext until `n` bytes, or until close_notify if `n` is `usize::MAX`.
        fn receive(&mut self, n: usize) -> Vec<u8> {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while got.len() < n {
                match self.conn.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        got.extend_from_slice(&buf[..k]);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("client read: {e}"),
                }
                self.conn.read_tls(&mut self.tcp).unwrap();
                self.conn.process_new_packets().unwrap();
                self.trickle();
            }
            got
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[tokio::test]
    async fn records_in_pieces_key_updates_and_close_notify_both_ways_leave_no_buffer() {
        let (server, client) = configs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let from_agent: Vec<u8> = [
            &b"first"[..],
            &pattern(64 * 1024, 7),
            &b"after the key update"[..],
        ]
        .concat();
        let to_agent = pattern(70_000, 3);
        let agent = {
            let (from_agent, to_agent) = (from_agent.clone(), to_agent.clone());
            tokio::task::spawn_blocking(move || {
                let mut agent = TrickleClient::connect(addr, client);
                agent.send(&from_agent[..5]);
                agent.send(&from_agent[5..5 + 64 * 1024]);
                // Asks the sidecar to update its keys too, before it writes again.
                agent.conn.refresh_traffic_keys().unwrap();
                agent.send(&from_agent[5 + 64 * 1024..]);
                assert!(agent.receive(to_agent.len()) == to_agent, "gateway bytes");
                agent.conn.send_close_notify();
                agent.trickle();
                assert!(agent.receive(usize::MAX).is_empty(), "then close_notify");
            })
        };
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = AgentTls::accept(server, tcp, true).await.unwrap();
        assert_eq!(tls.sni(), Some("localhost"));
        let mut got = Vec::new();
        while got.len() < from_agent.len() {
            let n = tls.read(&mut got).await.unwrap();
            assert!(n > 0, "close_notify before the data ended");
        }
        assert!(got == from_agent, "the agent's bytes, in order");
        assert_eq!(
            (tls.incoming.capacity(), tls.outgoing.capacity()),
            (0, 0),
            "nothing is held between bursts"
        );
        tls.write_all(&to_agent).await.unwrap();
        assert_eq!(tls.outgoing.capacity(), 0);
        let mut rest = Vec::new();
        assert_eq!(tls.read(&mut rest).await.unwrap(), 0, "close_notify");
        tls.shutdown().await.unwrap();
        agent.await.unwrap();
    }

    #[tokio::test]
    async fn the_sni_is_known_for_resumed_sessions_too() {
        let (server, client) = configs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for expected in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
            let client = client.clone();
            let agent = tokio::task::spawn_blocking(move || {
                let mut agent = TrickleClient::connect(addr, client);
                agent.send(b"ping");
                // The answer comes after the session tickets, which the next agent offers.
                assert_eq!(agent.receive(4), b"pong");
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = AgentTls::accept(server.clone(), tcp, true).await.unwrap();
            let mut got = Vec::new();
            while got.len() < 4 {
                tls.read(&mut got).await.unwrap();
            }
            tls.write_all(b"pong").await.unwrap();
            agent.await.unwrap();
            assert_eq!(tls.session().handshake_kind(), Some(expected));
            assert_eq!(tls.sni(), Some("localhost"), "{expected:?}");
        }
    }

    #[tokio::test]
    async fn a_tcp_end_without_close_notify_is_an_unexpected_eof() {
        let (server, client) = configs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (done, wait_done) = std::sync::mpsc::channel::<()>();
        let agent = tokio::task::spawn_blocking(move || {
            let mut agent = TrickleClient::connect(addr, client);
            agent.send(b"bye");
            agent.tcp.shutdown(std::net::Shutdown::Write).unwrap();
            // The socket stays open: closing it over the unread session tickets would reset
            // the connection rather than end it.
            let _ = wait_done.recv();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = AgentTls::accept(server, tcp, false).await.unwrap();
        let mut got = Vec::new();
        let end = loop {
            match tls.read(&mut got).await {
                Ok(0) => panic!("no close_notify was sent"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"bye");
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof, "{end}");
        drop(done);
        agent.await.unwrap();
    }
}
