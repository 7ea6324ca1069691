//! Criterion benches of Mamba (to be written with the mixer).
fn main() {}
