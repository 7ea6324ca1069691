//! Criterion benches of S7 (to be written with the mixer).
fn main() {}
