//! A presence backend in miniature: follows one sidecar's lifecycle events (`GET /events`),
//! as a real backend would, for tests and for `ballast-fleet events`.
//!
//! It speaks HTTP/1.0 so that the response body is the stream itself, one JSON object per
//! line (`ballast_contract::events`). It only reads: it never judges what it reads.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// One open event stream.
pub struct EventConsumer {
    reader: BufReader<TcpStream>,
}

impl EventConsumer {
    /// Opens the stream of the sidecar whose admin API is `admin`. `query` is `""` (from the
    /// next event) or e.g. `"?after=12"`; `receive_buffer` shrinks the socket's receive buffer
    /// (a deliberately slow consumer). A refusal is an error carrying its status and body.
    pub async fn open(
        admin: SocketAddr,
        token: Option<&str>,
        query: &str,
        receive_buffer: Option<u32>,
    ) -> Result<Self> {
        let socket = if admin.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(size) = receive_buffer {
            // Before connecting, so the window the sidecar sees stays this small.
            socket.set_recv_buffer_size(size)?;
        }
        let mut tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(admin))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {admin}"))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!("GET /events{query} HTTP/1.0\r\nHost: {admin}\r\n{auth}\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(tcp);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
                .await
                .context("no response head")??;
            if read == 0 || line.trim().is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let status = head.lines().next().unwrap_or_default().to_owned();
        if !status.contains(" 200 ") {
            let mut body = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_to_string(&mut body))
                .await;
            bail!("{status}: {}", body.trim());
        }
        if !head
            .to_ascii_lowercase()
            .contains("content-type: application/x-ndjson")
        {
            bail!("not an event stream:\n{head}");
        }
        Ok(Self { reader })
    }

    /// The next event, or `None` if none came within `within` or the stream ended.
    pub async fn next(&mut self, within: Duration) -> Option<serde_json::Value> {
        let mut line = String::new();
        match tokio::time::timeout(within, self.reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => serde_json::from_str(&line).ok(),
            _ => None,
        }
    }

    /// Reads events into `read` until it holds `n` events of `kind`.
    pub async fn read_until_seen(
        &mut self,
        read: &mut Vec<serde_json::Value>,
        within: Duration,
        kind: &str,
        n: usize,
    ) -> Result<()> {
        self.read_until(read, within, |e| events_of(e, kind).count() == n)
            .await
            .with_context(|| format!("waiting for {n} {kind} events"))
    }

    /// Reads events into `read` until `done` holds for them; an error after `within`, or when
    /// the stream ends first.
    pub async fn read_until(
        &mut self,
        read: &mut Vec<serde_json::Value>,
        within: Duration,
        mut done: impl FnMut(&[serde_json::Value]) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        while !done(read) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("not seen within {within:?} ({} events read)", read.len());
            }
            let mut line = String::new();
            match tokio::time::timeout(left, self.reader.read_line(&mut line)).await {
                Err(_) => {}
                Ok(Ok(0)) => bail!("the stream ended ({} events read)", read.len()),
                Ok(Ok(_)) => read.push(
                    serde_json::from_str(&line)
                        .with_context(|| format!("not an event: {line:?}"))?,
                ),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Every event follows the one before by exactly one `seq` (a `gap` by its `missed`), within
/// one boot: nothing lost unannounced, nothing out of order, nothing twice.
pub fn check_accounted_in_order(events: &[serde_json::Value]) -> Result<()> {
    for pair in events.windows(2) {
        let seq = |e: &serde_json::Value| e["seq"].as_i64().unwrap_or(-1);
        let step = seq(&pair[1]) - seq(&pair[0]);
        let expected = pair[1]["missed"].as_i64().unwrap_or(1);
        if step != expected || pair[0]["boot"] != pair[1]["boot"] {
            bail!(
                "seq {} then {} (expected +{expected}, same boot): {pair:?}",
                seq(&pair[0]),
                seq(&pair[1])
            );
        }
    }
    Ok(())
}

/// Events of one kind (`connected`, `disconnected`, `refused`, `gap`).
pub fn events_of<'a>(
    events: &'a [serde_json::Value],
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    events.iter().filter(move |e| e["event"] == kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn order_checks_count_gaps_and_refuse_holes_repeats_and_boots() {
        let e = |seq: u64| json!({"seq": seq, "boot": "a", "event": "connected"});
        let gap = json!({"seq": 9, "boot": "a", "event": "gap", "missed": 6});
        assert!(check_accounted_in_order(&[e(1), e(2), e(3), gap.clone(), e(10)]).is_ok());
        assert!(check_accounted_in_order(&[e(1), e(3)]).is_err(), "a hole");
        assert!(check_accounted_in_order(&[e(1), e(1)]).is_err(), "a repeat");
        assert!(
            check_accounted_in_order(&[e(2), gap]).is_err(),
            "a gap miscounted"
        );
        let other = json!({"seq": 2, "boot": "b", "event": "connected"});
        assert!(
            check_accounted_in_order(&[e(1), other]).is_err(),
            "another boot"
        );
        assert_eq!(events_of(&[e(1), e(2)], "connected").count(), 2);
    }
}
