//! Criterion benches of S5 (to be written with the mixer).
fn main() {}
