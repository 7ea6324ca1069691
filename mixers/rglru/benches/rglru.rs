//! Criterion benches of RGLRU (to be written with the mixer).
fn main() {}
