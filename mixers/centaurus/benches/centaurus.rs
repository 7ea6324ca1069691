//! Criterion benches of Centaurus (to be written with the mixer).
fn main() {}
