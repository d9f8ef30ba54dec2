//! The Ferry coordinator (`ferry serve`) and the `ferry` CLI.
//!
//! The coordinator keeps each cluster's pin (a full commit of the fleet
//! repository), an append-only ledger of every pin change, each cluster's
//! last reported state, and drives staged rollouts. Agents dial in over
//! gRPC; the coordinator never dials out to clusters.
//!
//! `server` wires the parts; `service` is the gRPC surface; `hub` holds live
//! sessions and pushes assignments; `driver` owns running rollouts and
//! `rollout` is their pure state machine; `store` is the durable state
//! behind a trait; `repo` resolves refs; `pki` and `auth` are identity;
//! `summary` logs what many clusters did as few lines.
//! See docs/architecture.md.

pub mod auth;
pub mod bundle;
pub mod cli;
pub mod driver;
pub mod hub;
pub mod metrics;
pub mod pki;
pub mod repo;
pub mod rollout;
pub mod server;
pub mod service;
pub mod store;
pub mod summary;

pub use server::{Config, Coordinator, TlsFiles};
