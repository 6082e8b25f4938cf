//! # ballast-sidecar
//!
//! Runs beside the presence gateway in each pod. Agents hold one long-lived TLS connection to
//! it; it forwards the plain bytes to the gateway on localhost. Its job is to make the events
//! that used to drop every agent — certificate renewals, restarts, reconnect storms — invisible.
//!
//! Modules, in the order a connection meets them:
//! - [`config`]: flags and `BALLAST_*` environment variables.
//! - [`server`]: lifecycle — bind, accept, lame duck on SIGTERM.
//! - [`admission`]: refuse cheaply before the handshake when the pod is at its limits.
//! - [`tls`] and [`certificate`]: the served certificate, validated and hot-swapped.
//! - [`proxy`] and [`proxy_protocol`]: one connection's bytes, without idle buffers.
//! - [`connections`]: the table of live connections a drain chooses from.
//! - [`drain`]: closing N connections evenly over a window, gracefully.
//! - [`admin`] and [`metrics`]: `/healthz`, `/readyz`, `/metrics`, `/status`, `/drain`.
//!
//! It never depends on the operator: with no operator at all it proxies, reloads and drains
//! on SIGTERM exactly the same.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod certificate;
pub mod clock;
pub mod config;
pub mod connections;
pub mod drain;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod server;
pub mod tls;
