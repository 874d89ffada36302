//! Mistakes the compiler catches, each with a message that says what to do: a task argument
//! that borrows, a plain function passed to `run`. The expected messages are in `tests/ui/`.

#[test]
fn mistakes_fail_to_compile_with_a_message_that_says_what_to_do() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
