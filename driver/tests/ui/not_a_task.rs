// A plain function passed to `run` gets a note saying to add `#[blitzen::task]`.

fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let dispatcher = blitzen::MulticoreDispatcher::new(1).expect("a pool");
    dispatcher.run(square, 3);
}
