//! The Blitzen cluster server: task queue and result cache for `blitzen-client` agents and
//! drivers.
//!
//! Not built yet: this crate holds the place the workspace layout gives it. Until it lands,
//! Blitzen runs tasks on one machine only, with `blitzen::MulticoreDispatcher`.
