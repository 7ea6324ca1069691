//! Forward options a mixer ignores, as lrnnx's does.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{ForwardOpts, Mixer};

use crate::vec1;

/// Asserts that `forward` on `x (2, L, H)` gives exactly the same output with
/// `lengths = [L, L - 3]` (and, with `timesteps`, unit integration
/// timesteps) as without them: the mixer ignores them, as lrnnx's does.
pub fn assert_lengths_change_nothing(m: &dyn Mixer, x: &Tensor, timesteps: bool) {
    let l = x.dim(1).expect("x is (2, L, H)") as i64;
    let plain = m.forward(x, &ForwardOpts::default()).expect("forward");
    let opts = ForwardOpts {
        lengths: Some(Tensor::new(&[l, l - 3], &Device::Cpu).expect("lengths")),
        integration_timesteps: timesteps
            .then(|| Tensor::ones((2, l as usize), DType::F32, &Device::Cpu).expect("timesteps")),
    };
    let with = m.forward(x, &opts).expect("forward with options");
    assert_eq!(vec1(&plain), vec1(&with), "options changed the output");
}
