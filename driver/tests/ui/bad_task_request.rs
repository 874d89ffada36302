// What a task asks for is checked when it compiles: a size that does not parse, 0 CPUs.

#[blitzen::task(memory = "4 gigs")]
fn hog(mib: u64) -> u64 {
    mib
}

#[blitzen::task(cpus = 0)]
fn nothing() {}

fn main() {
    let dispatcher = blitzen::MulticoreDispatcher::new(1).expect("a pool");
    dispatcher.run(hog, 3);
}
