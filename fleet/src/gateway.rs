//! The sample presence gateway: the user's container that sits behind the sidecar.
//!
//! It speaks a tiny line protocol over plain TCP so tests can see, from the agent's side, which
//! pod answered: `HELLO <agent-id>` → `WELCOME <pod>`, then `PING` → `PONG <pod>` per heartbeat;
//! anything else → `ERR unknown` and close. It never terminates TLS (that is the sidecar's
//! job) and keeps each idle connection to a task and a 256-byte buffer so one process can hold
//! tens of thousands of agents.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Longest line accepted; real lines are a few dozen bytes.
const MAX_LINE: u64 = 256;

/// Accepts connections forever, answering each with `pod_name`.
pub async fn serve(listener: TcpListener, pod_name: String) -> Result<()> {
    let pod_name: Arc<str> = pod_name.into();
    let open = Arc::new(AtomicUsize::new(0));
    tracing::info!(addr = %listener.local_addr()?, pod = %pod_name, "gateway listening");
    tokio::spawn(report_connections(Arc::downgrade(&open)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually EMFILE under a storm: back off briefly instead of spinning; the
                // kernel keeps the backlog meanwhile.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let pod_name = pod_name.clone();
        let open = open.clone();
        tokio::spawn(async move {
            open.fetch_add(1, Relaxed);
            if let Err(e) = converse(stream, &pod_name).await {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
            open.fetch_sub(1, Relaxed);
        });
    }
}

/// Logs the number of open connections every 10 s while it changes.
async fn report_connections(open: std::sync::Weak<AtomicUsize>) {
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let Some(open) = open.upgrade() else { return };
        let now = open.load(Relaxed);
        if now != last {
            tracing::info!(connections = now, "gateway connections");
            last = now;
        }
    }
}

/// Runs the line protocol on one connection until the client closes or misbehaves.
pub async fn converse<S>(stream: S, pod_name: &str) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // BufReader passes writes straight through, so one buffer serves both directions.
    let mut stream = BufReader::with_capacity(MAX_LINE as usize, stream);
    let mut line = Vec::with_capacity(64);
    let mut greeted = false;
    loop {
        line.clear();
        let n = (&mut stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            // Half-close: the agent is done sending; everything we owed is written already.
            break;
        }
        let reply = match (parse(&line), greeted) {
            (Some(Request::Hello), _) => {
                greeted = true;
                format!("WELCOME {pod_name}\n")
            }
            (Some(Request::Ping), true) => format!("PONG {pod_name}\n"),
            _ => {
                stream.write_all(b"ERR unknown\n").await?;
                break;
            }
        };
        stream.write_all(reply.as_bytes()).await?;
    }
    stream.shutdown().await
}

enum Request {
    Hello,
    Ping,
}

fn parse(line: &[u8]) -> Option<Request> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line {
        b"PING" => Some(Request::Ping),
        _ => match line.strip_prefix(b"HELLO ") {
            Some(id) if !id.is_empty() => Some(Request::Hello),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exchange(input: &[u8]) -> String {
        let (client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move { converse(server, "pod-a").await });
        let (mut r, mut w) = tokio::io::split(client);
        w.write_all(input).await.unwrap();
        w.shutdown().await.unwrap();
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        task.await.unwrap().unwrap();
        out
    }

    #[tokio::test]
    async fn hello_then_pings() {
        let out = exchange(b"HELLO agent-1\nPING\r\nPING\n").await;
        assert_eq!(out, "WELCOME pod-a\nPONG pod-a\nPONG pod-a\n");
    }

    #[tokio::test]
    async fn unknown_or_early_lines_are_refused_and_closed() {
        assert_eq!(exchange(b"PING\nHELLO x\n").await, "ERR unknown\n");
        assert_eq!(
            exchange(b"HELLO x\nBOGUS\nPING\n").await,
            "WELCOME pod-a\nERR unknown\n"
        );
        assert_eq!(exchange(b"HELLO \n").await, "ERR unknown\n");
    }

    #[tokio::test]
    async fn overlong_line_is_refused() {
        let mut input = b"HELLO ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1000));
        input.push(b'\n');
        assert_eq!(exchange(&input).await, "ERR unknown\n");
    }
}
