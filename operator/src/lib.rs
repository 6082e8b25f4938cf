//! # ballast-operator
//!
//! Reconciles `PresenceCluster` resources into a gateway fleet with the Ballast sidecar
//! injected. The pipeline of one reconcile: validate → build → apply → status.
//!
//! - [`crd`]: the resource's types; their doc comments are `kubectl explain`.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod crd;
