//! Command-line and environment configuration of the sidecar.
//!
//! Every flag can also be given as a `BALLAST_*` environment variable so that the operator can
//! configure the container through `env:` or `args:`, whichever reads better in the pod spec.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ballast_contract::duration::parse_duration;
use clap::Parser;

/// TLS-terminating presence sidecar: hot certificate reload, paced drains, admission control.
#[derive(Debug, Clone, Parser)]
// A flag given twice takes its last value (a person appending to a pod's args wins).
#[command(name = "ballast-sidecar", version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// Address the agents connect to (TLS).
    #[arg(long, env = "BALLAST_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// The gateway container's plain-TCP address inside the pod.
    #[arg(long, env = "BALLAST_UPSTREAM", default_value = "127.0.0.1:8080")]
    pub upstream: SocketAddr,

    /// Admin HTTP address (/healthz, /readyz, /metrics, /status, /drain).
    #[arg(long, env = "BALLAST_ADMIN", default_value = "0.0.0.0:9901")]
    pub admin: SocketAddr,

    /// PEM certificate chain, leaf first (for a mounted Secret: `.../tls.crt`).
    #[arg(long, env = "BALLAST_CERT")]
    pub cert: PathBuf,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1; RSA or ECDSA).
    #[arg(long, env = "BALLAST_KEY")]
    pub key: PathBuf,

    /// PEM bundle the served chain must lead to (for a mounted Secret: `.../ca.crt`, which
    /// cert-manager writes). A renewal that does not chain to it is refused and the previous
    /// certificate keeps serving; a missing or empty file means no such check.
    #[arg(long, env = "BALLAST_CA")]
    pub ca: Option<PathBuf>,

    /// PEM bundle of CAs that client certificates must chain to; enables mutual TLS.
    #[arg(long, env = "BALLAST_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// Connections (established plus in handshake) above which new ones are refused before
    /// the TLS handshake.
    #[arg(long, env = "BALLAST_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// New TLS handshakes admitted per second (token bucket); the excess is refused cheaply
    /// so the client retries, possibly on another pod.
    #[arg(long, env = "BALLAST_MAX_HANDSHAKES_PER_SECOND", default_value_t = 500)]
    pub max_handshakes_per_second: u32,

    /// TLS handshakes in progress at once.
    #[arg(long, env = "BALLAST_MAX_CONCURRENT_HANDSHAKES", default_value_t = 256)]
    pub max_concurrent_handshakes: usize,

    /// A client that has not finished its handshake within this time is cut (slowloris).
    #[arg(long, env = "BALLAST_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Longest a write may wait for a peer (agent or gateway) that stopped reading; then the
    /// connection is cut (cause `timeout`). Also bounds how long a drain can wait on one.
    /// Must be above zero: a zero deadline would cut every connection at its first write.
    #[arg(long, env = "BALLAST_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub write_timeout: Duration,

    /// Close a connection that moved no byte either way for this long (`0`: never). Presence
    /// agents send heartbeats, so set it to a few heartbeat periods to shed dead peers that
    /// never sent a FIN; the close carries close_notify, so a live agent reconnects at once.
    #[arg(long, env = "BALLAST_IDLE_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Time allowed to connect to the gateway for each new agent.
    #[arg(long, env = "BALLAST_UPSTREAM_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// On SIGTERM, close every connection spread evenly over this window, then exit.
    #[arg(long, env = "BALLAST_SHUTDOWN_DRAIN", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,

    /// Send a PROXY protocol v2 header to the gateway so it sees the agent's address.
    #[arg(long, env = "BALLAST_PROXY_PROTOCOL", default_value_t = false)]
    pub proxy_protocol: bool,

    /// Listen backlog of the agents' socket (the kernel caps it at net.core.somaxconn).
    #[arg(long, env = "BALLAST_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// How often the certificate and key files are checked for a new version.
    #[arg(long, env = "BALLAST_RELOAD_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub reload_interval: Duration,

    /// The agents' protocol, for reconnect hints on a planned close: `tcp` (close_notify
    /// alone), `mqtt` (MQTT 5 agents also get DISCONNECT 0x9C, use another server),
    /// `websocket` (a close frame 1012, service restart), `auto` (either, by the agent's first
    /// bytes).
    #[arg(long, env = "BALLAST_PROTOCOL", value_enum, default_value = "tcp")]
    pub protocol: crate::hint::Protocol,

    /// With `--protocol mqtt|auto`: the MQTT 5 Server Reference the DISCONNECT 0x9C carries,
    /// where the agent should reconnect (e.g. `eu-2.presence.example:8883`). Without it the
    /// agent reconnects to the address it used, which lands on another pod.
    #[arg(long, env = "BALLAST_MQTT_SERVER_REFERENCE", value_parser = crate::hint::parse_server_reference)]
    pub mqtt_server_reference: Option<String>,

    /// The cluster's session-ticket key file (`ticket-keys.json` of the operator's
    /// `<cluster>-ticket-keys` Secret). With it, TLS session tickets are sealed with keys every
    /// pod shares, so an agent moved to another pod resumes instead of a full handshake.
    /// Watched and reloaded like the certificate; a bad file is refused and the keys loaded
    /// before keep working. Without it, resumption only on the same process.
    #[arg(long, env = "BALLAST_TICKET_KEYS")]
    pub ticket_keys: Option<PathBuf>,

    /// Lifecycle events kept for `GET /events` (connected, disconnected with its cause,
    /// refused); 0 turns events off. A consumer that falls this far behind misses the oldest
    /// and is told how many (a gap marker). About 300 bytes each.
    #[arg(long, env = "BALLAST_EVENTS_BUFFER", default_value_t = 0)]
    pub events_buffer: usize,

    /// File holding the bearer token `GET /events` requires; without it only loopback callers
    /// may stream events. Read on each request, so it can be rotated.
    #[arg(long, env = "BALLAST_EVENTS_TOKEN_FILE")]
    pub events_token_file: Option<PathBuf>,

    /// How long after a planned close an agent is expected back (the `expected_back_by` of
    /// its `disconnected` event): the cluster's presence offline threshold.
    #[arg(long, env = "BALLAST_PLANNED_RECONNECT_WINDOW", default_value = "60s", value_parser = parse_duration)]
    pub planned_reconnect_window: Duration,

    /// This pod's name, in every event (default: the host name, which in a pod is its name).
    #[arg(long, env = "BALLAST_POD_NAME")]
    pub pod_name: Option<String>,

    /// File holding a bearer token required by mutating admin endpoints; without it they
    /// answer loopback callers only. Read on each request, so it can be rotated.
    #[arg(long, env = "BALLAST_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Local addresses to open gateway connections from, round-robin (comma separated).
    /// One source address reaches at most ~28k connections to one upstream port, so a pod
    /// expecting more spreads them over several loopback addresses (127.0.0.1,127.0.0.2,…).
    #[arg(long, env = "BALLAST_UPSTREAM_SOURCES", value_delimiter = ',')]
    pub upstream_sources: Vec<IpAddr>,

    /// The operator's report endpoint, `host:port` (in a cluster, its Service's DNS name).
    /// Without it the sidecar reports to no one and runs on its own limits alone.
    #[arg(long, env = "BALLAST_OPERATOR")]
    pub operator: Option<String>,

    /// PEM bundle of the CA(s) the operator's serving certificate must chain to.
    #[arg(long, env = "BALLAST_OPERATOR_CA", requires = "operator")]
    pub operator_ca: Option<PathBuf>,

    /// Name the operator's certificate must carry (default: the host of `--operator`).
    #[arg(long, env = "BALLAST_OPERATOR_SERVER_NAME", requires = "operator")]
    pub operator_server_name: Option<String>,

    /// The pod's projected ServiceAccount token (audience `ballast.dev/report`), presented with
    /// every report. Read on each report, so the kubelet's rotation is picked up.
    #[arg(long, env = "BALLAST_OPERATOR_TOKEN_FILE", requires = "operator")]
    pub operator_token_file: Option<PathBuf>,

    /// How often a report is sent.
    #[arg(long, env = "BALLAST_REPORT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub report_interval: Duration,

    /// Log format.
    #[arg(long, env = "BALLAST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// Open files kept for everything but agents: listeners, the admin API's callers, the
    /// report connection, the certificate files, the log.
    pub const RESERVED_OPEN_FILES: u64 = 128;

    /// `--max-connections`, lowered to what `open_file_limit` allows: each agent holds two
    /// descriptors (its socket and the gateway's), and a pod that admits more than it can
    /// open fails in `accept` instead of refusing cleanly before the handshake.
    pub fn max_connections_within(&self, open_file_limit: u64) -> usize {
        let fits = open_file_limit.saturating_sub(Self::RESERVED_OPEN_FILES) / 2;
        self.max_connections.min(fits.max(1) as usize)
    }
}

/// How log lines are written.
/// The one duration grammar, for options where zero would be a trap rather than "off".
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be above zero".into()),
        d => Ok(d),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(args: &[&str]) -> Result<Config, clap::Error> {
        let base = ["ballast-sidecar", "--cert", "c", "--key", "k"];
        Config::try_parse_from(base.iter().chain(args))
    }

    #[test]
    fn durations_take_the_one_grammar() {
        let c = with(&["--shutdown-drain", "2.5s", "--handshake-timeout", "1m30s"]).unwrap();
        assert_eq!(c.shutdown_drain, Duration::from_millis(2500));
        assert_eq!(c.handshake_timeout, Duration::from_secs(90));
        assert_eq!(
            with(&["--reload-interval", "500ms"])
                .unwrap()
                .reload_interval,
            Duration::from_millis(500)
        );
        assert_eq!(
            with(&["--shutdown-drain", "0"]).unwrap().shutdown_drain,
            Duration::ZERO
        );
        for bad in ["2.5", "30", "-1s", "soon", "1 min"] {
            let err = with(&[&format!("--shutdown-drain={bad}")]).unwrap_err();
            assert!(err.to_string().contains("--shutdown-drain"), "{bad}: {err}");
        }
    }

    #[test]
    fn max_connections_fit_the_open_file_limit() {
        let c = with(&[]).unwrap();
        assert_eq!(c.max_connections, 50_000);
        // This machine's hard limit: 20,000 files hold 9,936 agents and the reserve.
        assert_eq!(c.max_connections_within(20_000), 9_936);
        assert_eq!(c.max_connections_within(1_000_000), 50_000);
        assert_eq!(c.max_connections_within(64), 1);
        let last = with(&["--max-connections", "10", "--max-connections", "20"]).unwrap();
        assert_eq!(
            last.max_connections, 20,
            "a flag given twice takes its last value"
        );
    }

    #[test]
    fn a_zero_write_timeout_is_refused() {
        let e = with(&["--write-timeout", "0s"]).unwrap_err().to_string();
        assert!(e.contains("must be above zero"), "{e}");
        assert_eq!(
            with(&["--write-timeout", "250ms"]).unwrap().write_timeout,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn defaults_match_the_documented_interface() {
        let c = Config::try_parse_from(["ballast-sidecar", "--cert", "c", "--key", "k"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(c.upstream, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin, "0.0.0.0:9901".parse().unwrap());
        assert!(!c.proxy_protocol);
        assert!(c.upstream_sources.is_empty());
        assert!(
            c.operator.is_none(),
            "reporting is opt-in: the data plane needs no operator"
        );
        assert_eq!(c.report_interval, Duration::from_secs(1));
        assert_eq!(c.write_timeout, Duration::from_secs(30));
        assert_eq!(
            c.idle_timeout,
            Duration::ZERO,
            "no idle timeout unless asked"
        );
    }

    #[test]
    fn operator_options_need_the_operator() {
        let err = with(&["--operator-ca", "ca.pem"]).unwrap_err();
        assert!(err.to_string().contains("--operator"), "{err}");
    }

    #[test]
    fn a_missing_certificate_flag_is_a_clear_error() {
        let err = Config::try_parse_from(["ballast-sidecar", "--key", "k"]).unwrap_err();
        assert!(err.to_string().contains("--cert"), "{err}");
    }
}
