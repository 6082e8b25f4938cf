//! # ballast-planner
//!
//! Every decision Ballast makes about moving connections, in one pure function:
//! [`plan`]`(spec, observation, state) -> Plan`. Given what the sidecars last reported, it
//! decides which pods shed how many connections over the next interval, which pods accept new
//! ones, when a pod may restart, and how fast the whole fleet may reconnect.
//!
//! It owns:
//! - [`budget`]: one fleet-wide rate of planned reconnects, capped by the spec and by the spare
//!   handshake capacity of the accepting pods, adapted by additive increase and multiplicative
//!   decrease from the handshake latency, refusals and failures the sidecars report.
//! - the rolling restart ([`state::Rollout`]): headroom check, stop steering, paced drain,
//!   restart, wait for the successor — never more than `max_unavailable` pods at once.
//! - the re-handshake of connections still on an older certificate within a window.
//! - rebalancing with hysteresis: only the excess moves, donors are fixed for an episode so
//!   connections are never planned back.
//! - steering: which pods accept new connections; never none.
//!
//! It must never do I/O, read a clock, or depend on kube, k8s-openapi, tokio or rustls: time
//! comes in through [`Observation::now`], and everything that must survive an operator
//! restart is in the serializable [`State`] it returns. The operator runs it on live reports;
//! `ballast-fleet simulate` runs this very code on a million simulated agents.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod allocate;
pub mod budget;
mod plan;
pub mod spec;
pub mod state;
mod why;

pub use plan::{plan, Action, Plan, PodPlan};
pub use spec::{Spec, Tuning};
pub use state::State;
pub use why::Why;

mod observe;
pub use observe::{Observation, PodObservation, PodReport};
