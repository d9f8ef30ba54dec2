//! Ferry's test world: helpers shared by the end-to-end tests, the sandbox
//! and the benchmarks. The Kubernetes API emulator is the `kube-emulator`
//! crate beside this one.

pub mod bench;
pub mod fleetsim;
pub mod githttp;
pub mod harness;
pub mod postgres;
pub mod sshgit;
pub mod world;
