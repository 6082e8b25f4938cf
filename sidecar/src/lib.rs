//! # ballast-sidecar
//!
//! Runs beside the presence gateway in each pod. Agents hold one long-lived TLS connection to
//! it; it forwards the plain bytes to the gateway on localhost. Its job is to make the events
//! that used to drop every agent — certificate renewals, restarts, reconnect storms — invisible.
//!
//! The public surface is what the binary needs: [`Config`] (flags and `BALLAST_*` environment
//! variables), [`TlsState::load`] (the initial certificate, or a [`StartupError`]) and [`run`].
//! Everything else is private. Modules, in the order a connection meets them:
//! - `config`: flags and `BALLAST_*` environment variables.
//! - `server`: lifecycle — bind, accept, lame duck on SIGTERM; `accept_errors` paces an
//!   accept loop that runs out of file descriptors.
//! - `admission`: pace handshakes, queueing a burst, and refuse cheaply beyond the queue.
//! - `tls`: the served certificate, validated by `ballast-certs` and hot-swapped;
//!   `secret_watch` wakes the reload when the kubelet swaps the Secret volume; `tickets`
//!   seals session tickets with the cluster's shared keys so moved agents resume.
//! - `agent_tls`: one agent's TLS session on rustls's unbuffered API, holding no buffer while
//!   the agent is quiet.
//! - `proxy` and `proxy_protocol`: one connection's bytes, without idle buffers; `hint`
//!   follows the agents' MQTT or WebSocket framing just enough to tell them, on a planned
//!   close, to reconnect elsewhere.
//! - `connections`: the table of live connections a drain chooses from.
//! - `events`: lifecycle events (connected, disconnected and why, refused) in a bounded
//!   journal that `GET /events` streams to presence backends.
//! - `drain`: closing N connections over a window at the pace of `ballast_contract::pacing`.
//! - `admin` and `metrics`: `/healthz`, `/readyz`, `/metrics`, `/status`, `/drain`; the
//!   bodies of `/status` and `/drain` are `ballast-contract`'s types.
//! - `operator_link`: with `--operator`, a report every second over one authenticated HTTPS
//!   connection; `recent` keeps the handshake figures of the current report.
//! - `directives`: what the operator's answer asks (steer away, quota, drain), until it lapses.
//!
//! It never depends on the operator (nor the operator on it): what they share is
//! `ballast-contract` (the wire contract, durations, clock) and `ballast-certs` (what may be
//! served). With no operator at all it proxies, reloads and drains on SIGTERM exactly the same.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod accept_errors;
mod admin;
mod admission;
mod agent_tls;
mod config;
mod connections;
mod directives;
mod drain;
mod events;
mod hint;
mod metrics;
mod operator_link;
mod proxy;
mod proxy_protocol;
mod recent;
mod secret_watch;
mod server;
mod tickets;
mod tls;

pub use config::{Config, LogFormat};
pub use server::run;
pub use tls::{StartupError, TlsState};
