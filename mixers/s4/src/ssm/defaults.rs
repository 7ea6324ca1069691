//! lrnnx's default argument values shared by the `S4` and `S4D` configs, as
//! functions for `#[serde(default = "...")]`.

/// `final_act="glu"`.
pub fn glu() -> Option<String> {
    Some("glu".into())
}
/// `1` (`channels`, `rank`).
pub fn one() -> usize {
    1
}
/// `true`.
pub fn yes() -> bool {
    true
}
/// `dt_min=0.001`.
pub fn dt_min() -> f64 {
    0.001
}
/// `dt_max=0.1`.
pub fn dt_max() -> f64 {
    0.1
}
/// `dt_transform="exp"`.
pub fn exp() -> String {
    "exp".into()
}
/// `"none"` (the real/imaginary transforms).
pub fn none() -> String {
    "none".into()
}
/// `init="legs"`.
pub fn legs() -> String {
    "legs".into()
}
/// `forward_mode="auto"` (ours).
pub fn auto() -> String {
    "auto".into()
}
/// `B_clip=2.0`.
pub fn b_clip() -> Option<f64> {
    Some(2.0)
}
