//! Reading the sidecars' own account of themselves (`GET /status` on the admin port).
//!
//! Read-only and best effort: a sidecar that does not answer within the timeout is reported
//! as unknown, never as zero, and nothing the operator does to the data plane depends on an
//! answer arriving. (The sidecar→operator report stream of the design replaces this poll when
//! drains are orchestrated; until then a read needs no credentials.)

use std::net::SocketAddr;
use std::time::Duration;

use ballast_contract::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::status::SidecarReport;

const TIMEOUT: Duration = Duration::from_secs(2);
/// A `/status` answer is ~1.5 KiB; anything far larger is not a sidecar.
const MAX_RESPONSE: u64 = 64 * 1024;

/// Fetches and parses one sidecar's `/status`; `None` if it cannot be had in time.
pub async fn fetch(admin: SocketAddr) -> Option<SidecarReport> {
    match tokio::time::timeout(TIMEOUT, get_status(admin)).await {
        Ok(Ok(report)) => Some(report),
        Ok(Err(err)) => {
            tracing::debug!(%admin, error = %err, "sidecar status unreadable");
            None
        }
        Err(_) => {
            tracing::debug!(%admin, "sidecar status timed out");
            None
        }
    }
}

async fn get_status(admin: SocketAddr) -> anyhow::Result<SidecarReport> {
    let mut stream = TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await?;
    parse(&response)
}

fn parse(response: &[u8]) -> anyhow::Result<SidecarReport> {
    let text = std::str::from_utf8(response)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP header end"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "status answered {}",
        head.lines().next().unwrap_or("")
    );
    let status: Status = serde_json::from_str(body)?;
    Ok(SidecarReport {
        connections: status.connections as u64,
        sha256: status.certificate.sha256,
        draining: status.draining.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_contract::{
        CertificateStatus, Counters, DrainProgress, Limits, UpstreamStatus, PROTOCOL_VERSION,
    };

    fn status(connections: usize, draining: Option<DrainProgress>) -> Status {
        Status {
            protocol_version: PROTOCOL_VERSION,
            connections,
            accepting: true,
            ready: true,
            draining,
            upstream: UpstreamStatus {
                address: "127.0.0.1:8080".into(),
                reachable: true,
            },
            certificate: CertificateStatus {
                sha256: "ab12".into(),
                not_before: "2026-11-23T00:00:00Z".into(),
                not_after: "2027-02-21T00:00:00Z".into(),
                loaded_at: "2026-11-24T09:00:00Z".into(),
                generation: 1,
                connections_on_current: connections,
                connections_on_older: 0,
                last_error: None,
                last_error_reason: None,
                last_error_at: None,
            },
            limits: Limits {
                max_connections: 50_000,
                max_handshakes_per_second: 500,
                max_concurrent_handshakes: 256,
                handshake_timeout_seconds: 10.0,
                shutdown_drain_seconds: 30.0,
            },
            counters: Counters {
                accepted: 42,
                refused: Default::default(),
                closed: Default::default(),
                certificate_reloads: Default::default(),
                handshakes_in_flight: 0,
            },
        }
    }

    fn answer(body: &str) -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{body}").into_bytes()
    }

    #[test]
    fn parses_the_sidecars_status_answer() {
        let body = serde_json::to_string_pretty(&status(42, None)).unwrap();
        let report = parse(&answer(&body)).unwrap();
        assert_eq!(report.connections, 42);
        assert_eq!(report.sha256, "ab12");
        assert!(!report.draining);
        assert!(parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}").is_err());
        assert!(parse(b"garbage").is_err());
        assert!(parse(&answer(r#"{"connections": 42}"#)).is_err());
    }

    #[test]
    fn a_running_drain_is_reported_as_draining() {
        let progress = DrainProgress {
            target: 10,
            closed: 3,
            over_seconds: 10.0,
            started_at: "2026-11-24T10:00:00Z".into(),
            finished: false,
        };
        let body = serde_json::to_string(&status(7, Some(progress))).unwrap();
        assert!(parse(&answer(&body)).unwrap().draining);
    }

    #[test]
    fn a_newer_sidecars_extra_fields_are_ignored() {
        let mut value = serde_json::to_value(status(5, None)).unwrap();
        value["steering"] = serde_json::json!({"weight": 0.5});
        let report = parse(&answer(&value.to_string())).unwrap();
        assert_eq!((report.connections, report.sha256.as_str()), (5, "ab12"));
    }
}
