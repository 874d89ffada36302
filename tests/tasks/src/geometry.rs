//! Tasks in a module of the library: a module of its own is another codegen unit, which the
//! linker could drop on its own if nothing held it.

/// The volume of a box.
#[blitzen::task]
pub fn volume(width: u64, height: u64, depth: u64) -> u64 {
    width * height * depth
}
