//! Criterion benches of S4D (to be written with the mixer).
fn main() {}
