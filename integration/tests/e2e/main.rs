//! Ferry's end-to-end suite: one test binary, built once per run.

mod emulator;
mod fleet;
mod rollouts;
mod security;
