//! Ferry's end-to-end suite: one test binary, built once per run.

mod bundles;
mod emulator;
mod faults;
mod fleet;
mod git_access;
mod helm_sources;
mod images;
mod inputs;
mod install;
mod inventory;
mod operations;
mod preview;
mod process;
mod replicas;
mod rollouts;
mod scale;
mod security;
mod signatures;
mod sites;
mod store;
