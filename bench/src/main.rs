//! The tidings benchmark runner (see issue 7).
fn main() {}
