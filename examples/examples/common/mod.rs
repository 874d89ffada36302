//! The tasks shared by the distributed examples (the seed's `common.py`): both the client
//! agent, which runs them, and the driver, which submits them, include this module.

use std::time::Duration;

/// Sleeps `delay` seconds and returns it.
#[blitzen::task]
pub fn time_consuming_function(delay: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(delay));
    delay
}
