//! The S7 decoding step on CPU slices: every weight is read once, in place,
//! with no autograd graph and no GEMM repacking.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::Result;

use crate::S7;
use lrnnx_kernels::cpu::matmul_t;
use lrnnx_kernels::cpu::{cpu_slice, gelu, Float};

/// Binds `$name` to the contiguous CPU slice of `$t` (the guard lives as long as the slice).
macro_rules! slice_of {
    ($name:ident, $t:expr, $ty:ty) => {
        let guard = $t.storage_and_layout();
        let $name = cpu_slice::<$ty>(&guard.0, guard.1, stringify!($name))?;
    };
}

impl S7 {
    /// The step on CPU slices: `x (B, H)`, `s (B, N)` to `(y (B, H), s)`, for
    /// CPU tensors in f32 or f64 with parameters of the same dtype (what
    /// `Mixer::step` checks before choosing it).
    pub(crate) fn step_cpu(&self, x: &Tensor, s: &Tensor) -> Result<(Tensor, Tensor)> {
        let (x, s) = (x.contiguous()?, s.contiguous()?);
        match (x.dtype(), x.device().is_cpu()) {
            (DType::F32, true) => self.step_typed::<f32>(&x, &s),
            (DType::F64, true) => self.step_typed::<f64>(&x, &s),
            (dtype, _) => Err(lrnnx_framework::Error::shape(
                "S7 slice step input",
                "a CPU f32 or f64 tensor",
                (dtype, x.device().location()),
            )),
        }
    }

    fn step_typed<T: Float>(&self, x: &Tensor, s: &Tensor) -> Result<(Tensor, Tensor)> {
        let (h, n) = (self.d_model, self.cfg.d_state);
        let b = x.dim(0)?;
        slice_of!(xs, x, T);
        slice_of!(ss, s, T);
        slice_of!(w_in, self.in_proj, T);
        slice_of!(wx, self.x_proj, T);
        slice_of!(wg, self.gate_proj, T);
        slice_of!(base, self.base_params, T);
        let u = matmul_t(xs, h, w_in, None);
        // x_proj rows: A [0, N) | B (HN) | C (HN) | D (H) | bias (N).
        let rows = |start: usize, len: usize| &wx[start * h..(start + len) * h];
        let (b0, c0, d0) = (n, n + h * n, n + 2 * h * n);
        let a_raw = matmul_t(&u, h, rows(0, n), None);
        let d_bias = matmul_t(&u, h, rows(d0, h + n), None); // [D (H) | bias (N)] per row
        let bm = matmul_t(&u, h, rows(b0, h * n), None); // B[b, h*N + n]
        let cm = matmul_t(&u, h, rows(c0, h * n), None); // C[b, h*N + n]
        let mut s_new = vec![T::default(); b * n];
        let mut y = vec![T::default(); b * h];
        for r in 0..b {
            let ur = &u[r * h..(r + 1) * h];
            let (dr, biasr) = d_bias[r * (h + n)..(r + 1) * (h + n)].split_at(h);
            let sr = &mut s_new[r * n..(r + 1) * n];
            for (k, sk) in sr.iter_mut().enumerate() {
                let a = a_raw[r * n + k] + base[k];
                let a_bar = T::c(1.0) - T::c(1.0) / (a * a + T::c(0.5));
                *sk = a_bar * ss[r * n + k] + biasr[k];
            }
            let br = &bm[r * h * n..(r + 1) * h * n];
            for (hh, &uh) in ur.iter().enumerate() {
                for (sk, &bv) in sr.iter_mut().zip(&br[hh * n..(hh + 1) * n]) {
                    *sk += bv * uh;
                }
            }
            let cr = &cm[r * h * n..(r + 1) * h * n];
            for (hh, yh) in y[r * h..(r + 1) * h].iter_mut().enumerate() {
                let mut acc = dr[hh] * ur[hh];
                for (&cv, &sk) in cr[hh * n..(hh + 1) * n].iter().zip(sr.iter()) {
                    acc += cv * sk;
                }
                *yh = acc;
            }
        }
        let gy: Vec<T> = y.iter().map(|&v| gelu(v)).collect();
        let z = matmul_t(&gy, h, wg, None);
        let out: Vec<T> = z
            .iter()
            .zip(&y)
            .zip(xs)
            .map(|((&z, &y), &x)| T::c(1.0) / (T::c(1.0) + (-z).exp_()) * y + x)
            .collect();
        let dev = Device::Cpu;
        Ok((
            Tensor::from_vec(out, (b, h), &dev)?,
            Tensor::from_vec(s_new, (b, n), &dev)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use lrnnx_framework::ParamStore;

    use crate::{S7Config, S7};

    /// The slice step and the tensor-op step (used off the CPU) agree.
    #[test]
    fn slice_step_equals_tensor_step() {
        let store = ParamStore::init(3, DType::F64, &Device::Cpu);
        let m = S7::new(6, S7Config::new(5), &store.builder()).unwrap();
        let xp = &store.vars()["x_proj.weight"];
        xp.set(&(xp.as_tensor() * 20.0).unwrap()).unwrap();
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1.0, (3, 6), &dev).unwrap();
        let s = Tensor::randn(0f64, 1.0, (3, 5), &dev).unwrap();
        let a = m.step_cpu(&x, &s).unwrap();
        let b = m.step_tensors(&x, &s).unwrap();
        for (p, q) in [(&a.0, &b.0), (&a.1, &b.1)] {
            let err = lrnnx_testing::max_abs_diff(p, q);
            assert!(err < 1e-12, "{err}");
        }
    }
}
