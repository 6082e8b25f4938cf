//! Reading the sidecars' own account of themselves (`GET /status` on the admin port).
//!
//! Read-only and best effort: a sidecar that does not answer within the timeout is reported
//! as unknown, never as zero, and nothing the operator does to the data plane depends on an
//! answer arriving. (The sidecar→operator report stream of the design replaces this poll when
//! drains are orchestrated; until then a read needs no credentials.)

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::status::SidecarReport;

const TIMEOUT: Duration = Duration::from_secs(2);
/// A `/status` answer is ~1.5 KiB; anything far larger is not a sidecar.
const MAX_RESPONSE: u64 = 64 * 1024;

#[derive(Deserialize)]
struct StatusBody {
    connections: u64,
    draining: Option<serde_json::Value>,
    certificate: CertificateBody,
}

#[derive(Deserialize)]
struct CertificateBody {
    sha256: String,
}

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
    let body: StatusBody = serde_json::from_str(body)?;
    Ok(SidecarReport {
        connections: body.connections,
        sha256: body.certificate.sha256,
        draining: body.draining.is_some_and(|d| !d.is_null()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sidecars_status_answer() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"connections\": 42, \"accepting\": true, \"draining\": null, \"certificate\": {\"sha256\": \"ab12\", \"generation\": 1}}";
        let report = parse(answer).unwrap();
        assert_eq!(report.connections, 42);
        assert_eq!(report.sha256, "ab12");
        assert!(!report.draining);
        assert!(parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}").is_err());
        assert!(parse(b"garbage").is_err());
    }
}
