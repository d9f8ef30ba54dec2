//! Ferry's wire contract (`proto/ferry/v1`) and the small domain types that
//! agent and coordinator share (commits, cluster names, path templates,
//! assignments, rollout specs and states), with the conversions between
//! wire and domain types next to the generated code. Owns no I/O but for
//! dialling (`DialConfig`) and, with the `git` feature, Git fetches (`git`),
//! which agent and coordinator share, and with `ops` the metrics and probe
//! endpoint both serve.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");

pub mod assignment;
mod client;
pub mod codec;
mod domain;
#[cfg(feature = "git")]
pub mod git;
pub mod ledger;
#[cfg(feature = "ops")]
pub mod ops;
pub mod rollout;
mod selector;
pub mod status;
#[cfg(feature = "verify")]
pub mod verify;
pub use assignment::Assignment;
pub use client::{Bearer, DialConfig, DialError};
pub use domain::*;
pub use selector::LabelSelector;
