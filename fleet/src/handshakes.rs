//! A handshake-rate client for benchmarks: `clients` tasks open connections one after another
//! for a while, each a full TLS handshake (or, with `resume`, one resuming a session the proxy
//! issued earlier), a `HELLO` the gateway behind the proxy answers, then close_notify.
//!
//! It exists because the client is half of every handshake: `openssl s_time` spends ~1.4 ms of
//! CPU on each (OpenSSL 3), so on a 2-core machine it, not the proxy, sets the rate, and every
//! proxy looks alike. This client (rustls, ring) verifies the chain like an agent does at a
//! fraction of that, so more of the cores measure the proxy. It only measures; it judges
//! nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What to run.
#[derive(Clone, Debug)]
pub struct RateConfig {
    pub target: SocketAddr,
    /// PEM trust anchor(s) for the proxy's certificate.
    pub ca_pem: String,
    /// SNI, and the name verified in the certificate.
    pub server_name: String,
    /// Connections in flight at once.
    pub clients: usize,
    pub duration: Duration,
    /// Offer the last session the proxy issued (TLS 1.3 tickets) instead of a full handshake.
    pub resume: bool,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RateResult {
    /// Connections that completed: handshake, `HELLO`, `WELCOME`, close.
    pub connections: u64,
    /// Of those, how many resumed a session.
    pub resumed: u64,
    /// Attempts that failed (any step).
    pub failures: u64,
    pub seconds: f64,
    pub per_second: f64,
}

/// Runs the clients for `config.duration` and counts.
pub async fn run(config: RateConfig) -> Result<RateResult> {
    if config.clients == 0 {
        bail!("at least one client");
    }
    let mut tls = crate::agents::client_config(&config.ca_pem)?
        .as_ref()
        .clone();
    if config.resume {
        // One cache for all clients: each resumed handshake takes a ticket and is given one.
        tls.resumption = rustls::client::Resumption::in_memory_sessions(256);
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = ServerName::try_from(config.server_name.clone())
        .with_context(|| format!("invalid server name {:?}", config.server_name))?;
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let started = Instant::now();
    let until = started + config.duration;
    let tasks: Vec<_> = (0..config.clients)
        .map(|_| {
            let (connector, name, counts) = (connector.clone(), name.clone(), counts.clone());
            let target = config.target;
            tokio::spawn(async move {
                while Instant::now() < until {
                    match one(&connector, name.clone(), target).await {
                        Ok(resumed) => {
                            counts[0].fetch_add(1, Ordering::Relaxed);
                            if resumed {
                                counts[1].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            counts[2].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let connections = counts[0].load(Ordering::Relaxed);
    Ok(RateResult {
        connections,
        resumed: counts[1].load(Ordering::Relaxed),
        failures: counts[2].load(Ordering::Relaxed),
        seconds,
        per_second: connections as f64 / seconds,
    })
}

/// One connection, start to end; whether it resumed.
async fn one(
    connector: &tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    target: SocketAddr,
) -> Result<bool> {
    const LIMIT: Duration = Duration::from_secs(10);
    let work = async {
        let tcp = TcpStream::connect(target).await?;
        tcp.set_nodelay(true)?;
        let mut tls = connector.connect(name, tcp).await?;
        let resumed = matches!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        tls.write_all(b"HELLO bench\n").await?;
        let mut reader = BufReader::new(tls);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        if !line.starts_with("WELCOME") {
            bail!("the gateway answered {line:?}");
        }
        let mut tls = reader.into_inner();
        tls.shutdown().await?;
        Ok(resumed)
    };
    tokio::time::timeout(LIMIT, work)
        .await
        .context("timed out")?
}
