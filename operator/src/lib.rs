//! # ballast-operator
//!
//! Reconciles `PresenceCluster` resources into a gateway fleet with the Ballast sidecar
//! injected. The pipeline of one reconcile, each step its own module:
//!
//! 1. [`validate`]: is the spec usable, is the Secret there and its certificate good?
//! 2. [`workload`]: build every owned object as plain data (no client).
//! 3. [`reconcile`]: apply them with server-side apply (on spec changes, Secret changes, resync).
//!
//! Beside it, the report channel and the fast loop:
//! - [`report_server`] takes each sidecar's report over HTTPS ([`report_tls`]), believes it only
//!   for the pod its token is bound to ([`auth`], TokenReview), and answers with directives;
//! - [`hub`] holds the latest reports and turns what the operator wants into directives;
//! - [`observer`] runs every second: reports, Secret, pods → [`planning`] (the planner's
//!   drains, steering and restarts, carried out: directives through the hub, restarts through
//!   the Eviction API), [`status`] (pure), [`migration`] (the migration signal), Events and
//!   metrics; [`planned`] publishes which pods drain and until when, for presence backends.
//!
//! [`crd`] holds the resource's types; their doc comments are what `kubectl explain` shows.
//! [`secrets`] is the one way it writes a Secret (the admin token, the report CA, the shared
//! session-ticket keys [`reconcile`] rotates). [`metrics`] exports the operator's figures; [`leader`] keeps a second replica idle (it
//! answers reports with `not_leader`) until the first one is gone.
//!
//! It must never be what drops an agent: it depends on neither the sidecar nor the data
//! plane's health (what it shares with the sidecar is `ballast-contract` and `ballast-certs`),
//! and decisions about moving connections belong to `ballast-planner`, not to this crate.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod crd;
pub mod hub;
pub mod leader;
pub mod metrics;
pub mod migration;
pub mod observer;
pub mod planned;
pub mod planning;
pub mod reconcile;
pub mod renewals;
pub mod report_server;
pub mod report_tls;
pub mod secrets;
pub mod status;
pub mod validate;
pub mod workload;

#[cfg(test)]
mod testing;
