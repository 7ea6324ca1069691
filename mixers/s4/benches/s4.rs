//! Criterion benches of S4 (to be written with the mixer).
fn main() {}
