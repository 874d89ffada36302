//! The Blitzen cluster client agent: connects to a `blitzen-server` and runs tasks on N worker
//! processes, reusing the pool of `blitzen-common`.
//!
//! Not built yet: this crate holds the place the workspace layout gives it. Until it lands,
//! Blitzen runs tasks on one machine only, with `blitzen::MulticoreDispatcher`.
