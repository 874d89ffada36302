//! The runnable examples of Blitzen's README live in `examples/`; run one from the workspace
//! root with `cargo run --release --example NAME`.
