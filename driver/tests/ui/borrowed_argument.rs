// A task argument that borrows is refused by the macro, with the owned type to use instead.

#[blitzen::task]
fn shout(text: &str) -> String {
    text.to_uppercase()
}

#[blitzen::task]
fn total(values: &[u64]) -> u64 {
    values.iter().sum()
}

fn main() {}
