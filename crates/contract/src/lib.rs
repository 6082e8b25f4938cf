//! # ballast-contract
//!
//! What the sidecar and the operator agree on, and nothing else:
//!
//! - the wire contract between them: the body of the sidecar's `GET /status` ([`Status`] and
//!   its parts), the body of `POST /drain` ([`DrainRequest`]) and the drain progress both
//!   answer with ([`DrainProgress`]), and the report channel — the sidecar's [`Report`] and
//!   the operator's [`Answer`] with its [`Directives`] ([`report`]) — under one
//!   [`PROTOCOL_VERSION`];
//! - [`pacing`]: the one rule for spreading a drain's closes over its window;
//! - [`duration`]: the one duration grammar (`500ms`, `10s`, `1h30m`) of every flag, every
//!   crate and the CRD, with the schema pattern that accepts exactly it;
//! - [`clock`]: Unix seconds and their RFC 3339 form, as both sides print timestamps;
//! - [`events`]: the lifecycle events a sidecar streams to a presence backend;
//! - [`ticket_keys`]: the session-ticket key file the operator writes and every sidecar of a
//!   cluster reads, and the rule for which key encrypts, which decrypt and when to rotate.
//!
//! It must never do I/O (no sockets, files, clocks other than reading the system time, no
//! async runtime, TLS or Kubernetes client) and never depend on the sidecar or the operator:
//! both depend on it, so neither ever needs the other.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod clock;
pub mod drain;
pub mod duration;
pub mod events;
pub mod pacing;
pub mod report;
pub mod status;
pub mod ticket_keys;

pub use drain::{AllKeyword, DrainProgress, DrainRequest, DrainSize};
pub use report::{Answer, Directives, DrainDirective, Report, REPORT_PATH, TOKEN_AUDIENCE};
pub use status::{
    CertificateStatus, Counters, EventsStatus, Limits, SessionTickets, Status, UpstreamStatus,
};

/// Version of the sidecar↔operator wire contract, sent as `Status::protocol_version`.
///
/// Readers ignore fields they do not know, so a newer peer's extra fields are never fatal to
/// an older reader: adding a field does not change this number. It changes only for what an
/// older reader could misread — a field removed, renamed or changing meaning — so that such a
/// reader can tell. A `/status` body without the field comes from a sidecar that predates it,
/// which spoke version 1.
///
/// The one exception to "unknown fields are ignored" is a *mutation*: the sidecar refuses a
/// `POST /drain` body with a field it does not understand (see [`DrainRequest`]), so a drain is
/// never carried out half-understood.
pub const PROTOCOL_VERSION: u32 = 1;
