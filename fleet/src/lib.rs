//! Ballast's rehearsal kit: real TLS agents, a sample presence gateway and a demo PKI.
//!
//! Everything Ballast promises ("no agent is falsely offline during a rotation", "drains are
//! spread out") is measured with this crate against real sockets on loopback:
//!
//! - [`certs`] issues the CA, server certificates (current or expired) and fingerprints used by
//!   tests and demos.
//! - [`gateway`] is the user's container in miniature: a plain-TCP line protocol
//!   (`HELLO`/`WELCOME`, `PING`/`PONG`) that answers with its pod name.
//! - [`agents`] runs a fleet of long-lived TLS agents that heartbeat, reconnect with backoff
//!   and record every gap, close and handshake failure.
//! - [`handshakes`] opens connections back to back, for a benchmark's handshake rate.
//! - [`presence`] follows a sidecar's lifecycle events as a presence backend would.
//! - [`summary`] is the serialisable outcome of a run; [`progress`] prints the live line.
//! - [`simulate`] replays the incident and other events for a million simulated agents,
//!   side by side for today's tools and for Ballast, running `ballast-planner` itself.
//! - [`duration`] is the one duration grammar (`500ms`, `10s`, `5m`) the CLI accepts,
//!   re-exported from `ballast-contract` so every crate and the CRD agree on it.
//!
//! It must never be a runtime dependency of the sidecar or the operator (only their tests use
//! it), send traffic anywhere but the addresses it is given (loopback in every test), or keep a
//! copy of the planner's logic: the simulator calls `ballast-planner` itself.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod agents;
pub mod certs;
pub mod gateway;
pub mod handshakes;
pub mod latency;
pub mod presence;
pub mod progress;
pub mod simulate;
pub mod summary;

pub use ballast_contract::duration;
pub use progress::spawn_progress;
