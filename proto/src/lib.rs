//! Ferry's wire contract (`proto/ferry/v1`) and the small domain types that
//! agent and coordinator share: commits, cluster names, path templates.
//! Owns no I/O.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");

mod client;
mod domain;
mod selector;
pub use client::{Bearer, DialConfig, DialError};
pub use domain::*;
pub use selector::LabelSelector;
