//! Tasks in a library crate, the natural place for a user's tasks: the test's own client
//! (`blitzen-own-client`) serves them, and the tests drive them. The tasks of `geometry` are in
//! a module of their own, as a user's would be.

pub mod geometry;

/// The square of `x`.
#[blitzen::task]
pub fn square(x: u64) -> u64 {
    x * x
}

/// `text` with its words in reverse order.
#[blitzen::task]
pub fn reverse_words(text: String) -> String {
    text.split_whitespace().rev().collect::<Vec<_>>().join(" ")
}

/// Sleeps `delay` seconds and returns it: the original README's task.
#[blitzen::task]
pub fn time_consuming_function(delay: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_secs(delay));
    delay
}
