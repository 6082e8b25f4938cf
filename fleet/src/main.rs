//! `ballast-fleet`: run the sample gateway, an agent fleet, or mint demo certificates.
//!
//! Every flag can also come from a `BALLAST_FLEET_*` environment variable, so the same binary
//! runs unchanged as a process in tests and as a container in the e2e harness.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use ballast_fleet::agents::{Fleet, FleetConfig};
use ballast_fleet::certs::{Ca, Validity};
use ballast_fleet::duration::parse_duration;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ballast-fleet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sample presence gateway (plain TCP line protocol).
    Gateway(GatewayArgs),
    /// Run a fleet of TLS agents and print a JSON summary on stdout.
    Agents(AgentsArgs),
    /// Write a demo CA and server certificate (ca.crt, tls.crt, tls.key).
    Certs(CertsArgs),
    /// Open connections back to back (handshake, HELLO, close) and print the rate as JSON.
    Handshakes(HandshakesArgs),
    /// Replay the incident or another event on simulated agents, every strategy side by side.
    Simulate(ballast_fleet::simulate::cli::SimulateArgs),
}

#[derive(Args)]
struct GatewayArgs {
    /// Address to listen on.
    #[arg(long, env = "BALLAST_FLEET_LISTEN")]
    listen: SocketAddr,
    /// Pod name to answer with [default: $POD_NAME, else the hostname, else "gateway"].
    #[arg(long, env = "BALLAST_FLEET_NAME")]
    name: Option<String>,
}

#[derive(Args)]
struct AgentsArgs {
    /// Addresses to connect to, comma-separated (host:port).
    #[arg(long, env = "BALLAST_FLEET_TARGET", value_delimiter = ',', required = true, value_parser = parse_target)]
    target: Vec<SocketAddr>,
    /// Number of agents.
    #[arg(long, env = "BALLAST_FLEET_AGENTS", default_value_t = 100)]
    agents: usize,
    /// Spread the agents' first connections over this time.
    #[arg(long, env = "BALLAST_FLEET_RAMP", default_value = "0", value_parser = parse_duration)]
    ramp: Duration,
    /// Interval between heartbeats (PING).
    #[arg(long, env = "BALLAST_FLEET_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// A disconnection longer than this makes an agent falsely offline.
    #[arg(long, env = "BALLAST_FLEET_OFFLINE_THRESHOLD", default_value = "60s", value_parser = parse_duration)]
    offline_threshold: Duration,
    /// How long to run, ramp included.
    #[arg(long, env = "BALLAST_FLEET_DURATION", default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// PEM file with the CA that signs the servers' certificates.
    #[arg(long, env = "BALLAST_FLEET_CA")]
    ca: PathBuf,
    /// Name to send as SNI and to verify in the server certificate.
    #[arg(long, env = "BALLAST_FLEET_SERVER_NAME", default_value = "localhost")]
    server_name: String,
    /// Local addresses to connect from, comma-separated [default: 127.0.0.2, … one per 20 000
    /// agents when the targets are on loopback].
    #[arg(long, env = "BALLAST_FLEET_SOURCE_IPS", value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// First backoff step after a failure.
    #[arg(long, env = "BALLAST_FLEET_BACKOFF_BASE", default_value = "100ms", value_parser = parse_duration)]
    backoff_base: Duration,
    /// Longest backoff.
    #[arg(long, env = "BALLAST_FLEET_BACKOFF_CAP", default_value = "10s", value_parser = parse_duration)]
    backoff_cap: Duration,
    /// Limit on connect + TLS handshake + WELCOME.
    #[arg(long, env = "BALLAST_FLEET_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Each agent resumes its TLS session on reconnect (default: every handshake is full).
    #[arg(long, env = "BALLAST_FLEET_RESUME")]
    resume: bool,
    /// Include one entry per agent in the summary.
    #[arg(long, env = "BALLAST_FLEET_PER_AGENT")]
    per_agent: bool,
    /// Do not print the progress line.
    #[arg(long, env = "BALLAST_FLEET_QUIET")]
    quiet: bool,
}

#[derive(Args)]
struct CertsArgs {
    /// Directory to write ca.crt, tls.crt (full chain) and tls.key into.
    #[arg(long, env = "BALLAST_FLEET_OUT")]
    out: PathBuf,
    /// Subject alternative names (DNS names or IPs); repeat or comma-separate.
    #[arg(long, env = "BALLAST_FLEET_SAN", value_delimiter = ',', default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    san: Vec<String>,
    /// Issue an already expired server certificate (to rehearse a bad rotation).
    #[arg(long, env = "BALLAST_FLEET_EXPIRED")]
    expired: bool,
    /// Issue under the CA in this directory (its ca.crt and ca.key) instead of a new CA, so
    /// agents that trust it accept the new certificate: a renewal.
    #[arg(long, env = "BALLAST_FLEET_CA_DIR")]
    ca_dir: Option<PathBuf>,
}

#[derive(Args)]
struct HandshakesArgs {
    /// The proxy to connect to.
    #[arg(long, value_parser = parse_target)]
    target: SocketAddr,
    /// CA certificate (PEM) the proxy's certificate must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Name sent as SNI and verified in the certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Resume sessions (TLS 1.3 tickets) instead of full handshakes.
    #[arg(long)]
    resume: bool,
}

fn parse_target(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?}: no address"))
}

#[tokio::main]
async fn main() -> Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow!("a rustls crypto provider was already installed"))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Gateway(args) => gateway(args).await,
        Command::Agents(args) => agents(args).await,
        Command::Certs(args) => certs(args),
        Command::Handshakes(args) => handshakes(args).await,
        Command::Simulate(args) => ballast_fleet::simulate::cli::main(args),
    }
}

async fn gateway(args: GatewayArgs) -> Result<()> {
    raise_fd_limit();
    let name = args.name.unwrap_or_else(default_pod_name);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tokio::select! {
        served = ballast_fleet::gateway::serve(listener, name) => served,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn default_pod_name() -> String {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

async fn agents(args: AgentsArgs) -> Result<()> {
    raise_fd_limit();
    let ca_pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("reading CA {}", args.ca.display()))?;
    let mut config = FleetConfig::new(args.target, args.agents, ca_pem);
    config.ramp = args.ramp;
    config.heartbeat = args.heartbeat;
    config.offline_threshold = args.offline_threshold;
    config.duration = args.duration;
    config.server_name = args.server_name;
    config.source_ips = args.source_ips;
    config.backoff_base = args.backoff_base;
    config.backoff_cap = args.backoff_cap;
    config.connect_timeout = args.connect_timeout;
    config.resume = args.resume;
    let fleet = Fleet::start(config)?;
    if !args.quiet {
        ballast_fleet::spawn_progress(&fleet, Duration::from_secs(1));
    }
    // Ctrl-C ends the run early but still prints what was measured.
    tokio::select! {
        _ = tokio::time::sleep_until(fleet.deadline()) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, stopping the fleet"),
    }
    let mut summary = fleet.stop().await;
    if !args.per_agent {
        summary.per_agent.clear();
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

async fn handshakes(args: HandshakesArgs) -> Result<()> {
    raise_fd_limit();
    let ca_pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("reading CA {}", args.ca.display()))?;
    let result = ballast_fleet::handshakes::run(ballast_fleet::handshakes::RateConfig {
        target: args.target,
        ca_pem,
        server_name: args.server_name,
        clients: args.clients,
        duration: args.duration,
        resume: args.resume,
    })
    .await?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn certs(args: CertsArgs) -> Result<()> {
    const CA_NAME: &str = "ballast demo CA";
    let (ca, ca_pem) = match &args.ca_dir {
        None => {
            let ca = Ca::new(CA_NAME)?;
            let pem = ca.cert_pem();
            (ca, pem)
        }
        Some(dir) => {
            let read = |name: &str| {
                let path = dir.join(name);
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))
            };
            (
                Ca::from_key_pem(CA_NAME, &read("ca.key")?)?,
                read("ca.crt")?,
            )
        }
    };
    let validity = if args.expired {
        Validity::Expired
    } else {
        Validity::Current
    };
    let issued = ca.issue_server(&args.san, validity)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (name, content) in [
        ("ca.crt", ca_pem),
        ("ca.key", ca.key_pem()),
        ("tls.crt", issued.cert_pem.clone()),
        ("tls.key", issued.key_pem.clone()),
    ] {
        let path = args.out.join(name);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "wrote ca.crt, ca.key, tls.crt, tls.key to {} (leaf sha256 {})",
        args.out.display(),
        issued.fingerprint()
    );
    Ok(())
}

/// Tens of thousands of sockets need more than the usual 1024 descriptors.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn agents_flags_parse() {
        let cli = Cli::try_parse_from([
            "ballast-fleet",
            "agents",
            "--target",
            "127.0.0.1:8443,127.0.0.2:8443",
            "--agents",
            "10",
            "--ramp",
            "500ms",
            "--duration",
            "1m",
            "--ca",
            "ca.crt",
        ])
        .unwrap();
        let Command::Agents(a) = cli.command else {
            panic!("not agents")
        };
        assert_eq!(a.target.len(), 2);
        assert_eq!(a.ramp, Duration::from_millis(500));
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(a.offline_threshold, Duration::from_secs(60));
        assert!(Cli::try_parse_from(["ballast-fleet", "agents", "--ca", "x"]).is_err());
    }
}
