//! # ballast-operator
//!
//! Reconciles `PresenceCluster` resources into a gateway fleet with the Ballast sidecar
//! injected. The pipeline of one reconcile, each step its own module:
//!
//! 1. [`validate`]: is the spec usable, is the Secret there and its certificate good?
//! 2. [`workload`]: build every owned object as plain data (no client).
//! 3. [`reconcile`]: apply them with server-side apply, read the pods and sidecars.
//! 4. [`status`]: compute and write the status and the Events a person should see.
//!
//! [`crd`] holds the resource's types; their doc comments are what `kubectl explain` shows.
//! [`reports`] reads the sidecars' `/status`; [`metrics`] exports the operator's figures;
//! [`leader`] keeps a second replica idle until the first one is gone.
//!
//! It must never be what drops an agent: it depends on neither the sidecar nor the data
//! plane's health (what it shares with the sidecar is `ballast-contract` and `ballast-certs`),
//! and decisions about moving connections belong to `ballast-planner`, not to this crate.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod reports;
pub mod status;
pub mod validate;
pub mod workload;

#[cfg(test)]
mod testing;
