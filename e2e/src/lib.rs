//! Ballast's e2e kit: a process kubelet and Service resolution for a real control plane.
//!
//! There is no container runtime on this machine, so [`kubelet`] plays the kubelet for one
//! Node: pods the real kube-scheduler binds to it run as local processes, each on its own
//! loopback address, with real volumes, probes, restarts and graceful deletion, and an honest
//! `pods/status`. [`endpoints`] picks where e2e clients (the agent fleet) connect, the way
//! kube-proxy would.
//!
//! Modules, each owning one thing: [`images`] (image → binary table), [`env`] (environment
//! and `$(VAR)` expansion), [`objects`] (Secret/ConfigMap/downward-API reads), [`volumes`]
//! (atomic-writer volumes), [`processes`] (spawn/signal by PID in a private mount namespace),
//! [`probes`], [`pods`] (one pod's lifecycle and status), [`podips`], [`node`] (Node, Lease,
//! heartbeat), [`kubelet`] (the watch loop), [`endpoints`], [`control_plane`] (up.sh/down.sh
//! as a value that cleans up on drop), [`report_load`] (simulated sidecars on the report
//! channel) and [`report_bench`] (the operator under 1,000 of them).
//!
//! It must never fake what it cannot do: a pod feature it does not implement (subPath, exec
//! probes, native sidecars) is reported as an error, never silently skipped; and it only ever
//! signals processes it started, by their PID.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api_clients;
pub mod control_plane;
pub mod endpoints;
pub mod env;
pub mod error;
pub mod images;
pub mod kubelet;
pub mod node;
pub mod objects;
pub mod podips;
pub mod pods;
pub mod probes;
pub mod processes;
pub mod report_bench;
pub mod report_load;
pub mod volumes;

pub use error::{Error, Result};
