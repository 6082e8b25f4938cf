//! Shared harness for the sidecar's integration tests: real sidecar processes, a real sample
//! gateway, real TLS agents, certificates written the way the kubelet writes a mounted Secret.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_fleet::certs::{Ca, IssuedCert, Validity};

/// Heavy tests run one at a time: they measure rates and latencies on a 2-core machine, and
/// running them side by side would measure each other.
/// An async lock, because it is held across awaits (and a panicking test does not poison it).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    LOCK.lock().await
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ballast-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Secret volume as the kubelet lays it out: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped directory and renames a new
/// `..data` link over the old one in one atomic step.
pub struct SecretVolume {
    pub dir: TempDir,
    version: AtomicUsize,
    /// `ca.crt`, written with every update once set (cert-manager keeps it in the Secret).
    ca: std::sync::Mutex<Option<String>>,
}

impl SecretVolume {
    pub fn new(cert_pem: &str, key_pem: &str) -> Self {
        let volume = Self {
            dir: TempDir::new("secret"),
            version: AtomicUsize::new(0),
            ca: std::sync::Mutex::new(None),
        };
        volume.update(cert_pem, key_pem);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.0.join(name)).unwrap();
        }
        volume
    }

    /// A Secret with `ca.crt` too.
    pub fn with_ca(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Self {
        let volume = Self::new(cert_pem, key_pem);
        *volume.ca.lock().unwrap() = Some(ca_pem.to_owned());
        volume.update(cert_pem, key_pem);
        volume
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.0.join("ca.crt")
    }

    /// Not the kubelet's way: the key file rewritten in place, the certificate not yet.
    pub fn write_key_in_place(&self, key_pem: &str) {
        let data = std::fs::read_link(self.dir.0.join("..data")).unwrap();
        std::fs::write(self.dir.0.join(data).join("tls.key"), key_pem).unwrap();
    }

    /// The certificate file rewritten in place (after [`Self::write_key_in_place`]).
    pub fn write_cert_in_place(&self, cert_pem: &str) {
        let data = std::fs::read_link(self.dir.0.join("..data")).unwrap();
        std::fs::write(self.dir.0.join(data).join("tls.crt"), cert_pem).unwrap();
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.0.join("tls.crt")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.0.join("tls.key")
    }

    /// The kubelet's atomic update.
    pub fn update(&self, cert_pem: &str, key_pem: &str) {
        let v = self.version.fetch_add(1, Ordering::Relaxed);
        let stamp = format!("..2026_11_24_10_00_{v:02}.{}", 100_000 + v);
        let data = self.dir.0.join(&stamp);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(data.join("tls.key"), key_pem).unwrap();
        if let Some(ca) = self.ca.lock().unwrap().as_deref() {
            std::fs::write(data.join("ca.crt"), ca).unwrap();
        }
        let tmp = self.dir.0.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.0.join("..data")).unwrap();
    }
}

/// The test PKI: one CA, certificates for localhost.
pub struct Pki {
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Self {
        Self {
            ca: Ca::new("ballast test CA").unwrap(),
        }
    }

    pub fn issue(&self) -> IssuedCert {
        self.issue_with(Validity::Current)
    }

    pub fn issue_with(&self, validity: Validity) -> IssuedCert {
        self.ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()], validity)
            .unwrap()
    }
}

/// A running sample gateway on 127.0.0.1.
pub struct Gateway {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    pub async fn start(name: &str) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), name).await
    }

    pub async fn start_at(addr: SocketAddr, name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let _ = ballast_fleet::gateway::serve(listener, name).await;
        });
        Self { addr, task }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A real `ballast-sidecar` process.
pub struct Sidecar {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    _logdir: TempDir,
}

impl Sidecar {
    /// Starts the binary and waits until `/healthz` answers.
    pub fn start(volume: &SecretVolume, upstream: SocketAddr, extra: &[&str]) -> Self {
        Self::start_with_open_files(volume, upstream, extra, None)
    }

    /// [`Self::start`] under an open-file limit (soft and hard), through `prlimit`.
    pub fn start_with_open_files(
        volume: &SecretVolume,
        upstream: SocketAddr,
        extra: &[&str],
        open_files: Option<u64>,
    ) -> Self {
        let listen = free_addr();
        let admin = free_addr();
        let logdir = TempDir::new("log");
        let log = logdir.0.join("sidecar.log");
        let binary = env!("CARGO_BIN_EXE_ballast-sidecar");
        let mut command = match open_files {
            None => Command::new(binary),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(binary);
                c
            }
        };
        let child = command
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(["--upstream", &upstream.to_string()])
            .arg("--cert")
            .arg(volume.cert_path())
            .arg("--key")
            .arg(volume.key_path())
            .args(["--reload-interval", "200ms"])
            .args(extra)
            .env("BALLAST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let sidecar = Self {
            child,
            listen,
            admin,
            log,
            _logdir: logdir,
        };
        sidecar.wait_for(Duration::from_secs(20), |s| {
            s.get("/healthz")
                .map(|(code, _)| code == 200)
                .unwrap_or(false)
        });
        sidecar
    }

    /// Polls `check` every 50 ms until true, or panics with the sidecar's log.
    pub fn wait_for(&self, timeout: Duration, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "condition not met within {timeout:?}; sidecar log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http(self.admin, "GET", path, None, None)
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The value of one sample line of `/metrics`, e.g.
    /// `ballast_sidecar_connections_closed_total{cause="drain"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics").unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
    }

    pub fn served_sha256(&self) -> String {
        self.status()["certificate"]["sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One gateway "pod": a fresh certificate in a kubelet-style Secret volume, the sample
/// gateway, and a real sidecar in front of it. Keep the volume and gateway bound for the
/// test's length: dropping them removes the files and stops the gateway.
pub struct TestPod {
    pub pki: Pki,
    pub cert: IssuedCert,
    pub volume: SecretVolume,
    pub gateway: Gateway,
    pub sidecar: Sidecar,
}

impl TestPod {
    pub async fn start(sidecar_args: &[&str]) -> Self {
        let pki = Pki::new();
        let cert = pki.issue();
        let volume = SecretVolume::new(&cert.cert_pem, &cert.key_pem);
        let gateway = Gateway::start("pod-0").await;
        let sidecar = Sidecar::start(&volume, gateway.addr, sidecar_args);
        Self {
            pki,
            cert,
            volume,
            gateway,
            sidecar,
        }
    }
}

/// A minimal HTTP/1.1 client for the admin API (one request per connection).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = StdStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((code, body.to_owned()))
}

/// Fingerprint of the leaf a fresh TLS handshake with `addr` presents.
/// A TLS connection to `addr` (as `localhost`), trusting `ca_pem`, handshake done.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A client process driven over stdin/stdout (`tests/clients/*.py`), killed when the test
/// ends, passing or not, so that a failed test never leaves it running.
pub struct Driven {
    pub child: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Driven {
    /// Starts `python3 tests/clients/<script> args…` with piped stdin and stdout.
    pub fn python(script: &str, args: &[String]) -> Self {
        let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .arg(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (scripts/ensure-tools.sh installs what the clients need)");
        let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        Self { child, lines }
    }

    /// The next line the client printed, as JSON.
    pub fn read_json(&mut self) -> serde_json::Value {
        let line = self
            .lines
            .next()
            .expect("the client printed a line before exiting")
            .unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Sends one line to the client.
    pub fn say(&mut self, line: &str) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{line}").unwrap();
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tests/clients/<script>` with Python's own TLS stack (off the runtime's threads) and
/// returns its standard output; a failed run panics with both outputs.
pub async fn python_client(script: &str, args: Vec<String>) -> String {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(path)
            .args(args)
            .output()
            .expect("python3 runs (scripts/ensure-tools.sh checks for it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub async fn handshake_fingerprint(addr: SocketAddr, ca_pem: &str) -> String {
    let tls = tls_connect(addr, ca_pem).await;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    ballast_fleet::certs::sha256_hex(&leaf)
}

pub fn fleet_config(
    target: SocketAddr,
    agents: usize,
    ca_pem: &str,
) -> ballast_fleet::agents::FleetConfig {
    let mut config = ballast_fleet::agents::FleetConfig::new(vec![target], agents, ca_pem.into());
    config.heartbeat = Duration::from_millis(500);
    config.ramp = Duration::from_millis(agents as u64); // 1,000 agents per second
    config.duration = Duration::from_secs(600);
    config
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The counters of a fleet summary worth printing when an assertion fails (the full summary
/// carries per-agent detail and is far too long for a test log).
pub fn brief(s: &ballast_fleet::summary::FleetSummary) -> String {
    format!(
        "agents={} connected_at_end={} disconnects={} graceful={} abrupt={} reconnects={} \
         handshake_failures={:?} false_offline={} longest_gap={:.2}s pongs={} rtt_p99={}ms",
        s.agents,
        s.connected_at_end,
        s.disconnects,
        s.graceful_closes,
        s.abrupt_closes,
        s.reconnects,
        s.handshake_failures,
        s.false_offline,
        s.longest_gap_seconds,
        s.pongs,
        s.heartbeat_rtt_ms.p99
    )
}

#[allow(unused_imports)] // Not every test file follows events.
pub use ballast_fleet::presence::EventConsumer;

#[allow(unused_imports)]
pub use ballast_fleet::presence::events_of;

/// See [`ballast_fleet::presence::check_accounted_in_order`].
pub fn assert_accounted_in_order(events: &[serde_json::Value]) {
    if let Err(e) = ballast_fleet::presence::check_accounted_in_order(events) {
        panic!("{e}");
    }
}
