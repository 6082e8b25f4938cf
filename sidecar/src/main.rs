//! `ballast-sidecar` binary: parse flags, set up logging and the one crypto provider, run.

use std::sync::Arc;

use anyhow::Context as _;
use ballast_sidecar::{Config, LogFormat, TlsState};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let mut config = Config::parse();
    init_logging(config.log_format);

    // Exactly one provider in the build (ring), installed explicitly so no dependency can pick
    // another at runtime.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let _ = rustls::crypto::ring::default_provider().install_default();

    if let Some(limit) = raise_open_file_limit() {
        let fitted = config.max_connections_within(limit);
        if fitted < config.max_connections {
            tracing::warn!(
                max_connections = config.max_connections,
                open_file_limit = limit,
                clamped_to = fitted,
                "--max-connections needs two open files per agent and a reserve the limit does not allow: clamped (raise the container's nofile limit to serve more)"
            );
            config.max_connections = fitted;
        }
    }

    let tls = TlsState::load(
        provider,
        config.cert.clone(),
        config.key.clone(),
        config.ca.clone(),
        config.client_ca.clone(),
    )
    .context("cannot start without a valid certificate")?;
    let tls = match config.ticket_keys.clone() {
        Some(path) => tls.with_ticket_keys(path)?,
        None => tls,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ballast-sidecar")
        .build()?;
    runtime.block_on(ballast_sidecar::run(config, Arc::new(tls)))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BALLAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Each agent costs two descriptors (its socket and the gateway's); the default soft limit of
/// 1024 would cap a pod at ~500 agents.
fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(limit, "open-file limit raised to the hard limit");
            Some(limit)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-file limit");
            None
        }
    }
}
