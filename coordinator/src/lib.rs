//! The Ferry coordinator (`ferry serve`) and the `ferry` CLI.
//!
//! The coordinator keeps each cluster's pin (a full commit of the fleet
//! repository), an append-only ledger of every pin change, and each
//! cluster's last reported state. Agents dial in over gRPC; the coordinator
//! never dials out to clusters.

pub mod auth;
pub mod cli;
pub mod cli_rollout;
pub mod driver;
pub mod hub;
pub mod pki;
pub mod repo;
pub mod rollout;
pub mod server;
pub mod service;
pub mod store;

pub use server::{Config, Coordinator, TlsFiles};
