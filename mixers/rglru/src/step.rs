//! The RG-LRU decoding step on CPU slices: every weight is read once, in
//! place, with no autograd graph and no GEMM repacking.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::Result;

use crate::RgLru;
use lrnnx_kernels::cpu::matmul_t;
use lrnnx_kernels::cpu::{cpu_slice, gelu, log_sigmoid, sigmoid, with_simd, Float};
use lrnnx_kernels::depthwise_conv::conv_step;

/// Binds `$name` to the contiguous CPU slice of `$t` (the guard lives as long as the slice).
macro_rules! slice_of {
    ($name:ident, $t:expr, $ty:ty) => {
        let guard = $t.storage_and_layout();
        let $name = cpu_slice::<$ty>(&guard.0, guard.1, stringify!($name))?;
    };
}

/// As [`slice_of`] for an optional tensor.
macro_rules! opt_slice_of {
    ($name:ident, $t:expr, $ty:ty) => {
        let guard = $t.as_ref().map(|t| t.storage_and_layout());
        let $name = match &guard {
            Some(g) => Some(cpu_slice::<$ty>(&g.0, g.1, stringify!($name))?),
            None => None,
        };
    };
}

/// The gated update of one batch row: new state `hn` and gated output `yg`
/// from the gate pre-activations `rz`, `iz`, the conv output `xc`, the old
/// state `hs` and the GELU gate's pre-activation.
#[inline(always)]
fn update_impl<T: Float>(
    (rz, iz, xc): (&[T], &[T], &[T]),
    (hs, gate): (&[T], &[T]),
    cla: &[T],
    hn: &mut [T],
    yg: &mut [T],
) {
    let d = hn.len();
    let (rz, iz, xc, hs, gate, cla) = (
        &rz[..d],
        &iz[..d],
        &xc[..d],
        &hs[..d],
        &gate[..d],
        &cla[..d],
    );
    let yg = &mut yg[..d];
    for j in 0..d {
        let (r, i) = (sigmoid(rz[j]), sigmoid(iz[j]));
        let ab = (cla[j] * r).exp_();
        let m = (T::c(1.0) - ab * ab).relu().sqrt();
        hn[j] = ab * hs[j] + m * i * xc[j];
        yg[j] = gelu(gate[j]) * hn[j];
    }
}

with_simd! {
    fn update<T: Float>(
        rows: (&[T], &[T], &[T]),
        state: (&[T], &[T]),
        cla: &[T],
        hn: &mut [T],
        yg: &mut [T],
    ) = update_impl;
}

impl RgLru {
    /// The step on the CPU: `x (B, H)`, `conv_state (B, D, W)`, `h (B, D, 1)`
    /// to `(y (B, H), conv_state, h)`, all in `x`'s dtype, which must be the
    /// parameters'; `None` off the CPU or in other dtypes.
    pub(crate) fn step_cpu(
        &self,
        x: &Tensor,
        conv_state: &Tensor,
        h: &Tensor,
    ) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        if !x.device().is_cpu() || !conv_state.device().is_cpu() || !h.device().is_cpu() {
            return Ok(None);
        }
        self.check_state(x.dim(0)?, conv_state, h)?;
        // The states are kept in the accumulation dtype, which for f32/f64 is x's.
        let (conv_state, h) = (conv_state.to_dtype(x.dtype())?, h.to_dtype(x.dtype())?);
        let (x, conv_state, h) = (x.contiguous()?, conv_state.contiguous()?, h.contiguous()?);
        Ok(Some(match x.dtype() {
            DType::F32 => self.step_typed::<f32>(&x, &conv_state, &h)?,
            DType::F64 => self.step_typed::<f64>(&x, &conv_state, &h)?,
            _ => return Ok(None),
        }))
    }

    fn step_typed<T: Float>(
        &self,
        x: &Tensor,
        conv_state: &Tensor,
        h: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (hd, d, w) = (self.d_model, self.d_inner, self.cfg.d_conv);
        let b = x.dim(0)?;
        slice_of!(xs, x, T);
        slice_of!(cs, conv_state, T);
        slice_of!(hs, h, T);
        slice_of!(gw, self.gate_proj.w, T);
        opt_slice_of!(gb, self.gate_proj.b, T);
        slice_of!(iw, self.in_proj.w, T);
        opt_slice_of!(ib, self.in_proj.b, T);
        slice_of!(cw, self.conv_w, T);
        opt_slice_of!(cb, self.conv_b, T);
        slice_of!(rw, self.recurrent_gate_proj.w, T);
        opt_slice_of!(rb, self.recurrent_gate_proj.b, T);
        slice_of!(qw, self.input_gate_proj.w, T);
        opt_slice_of!(qb, self.input_gate_proj.b, T);
        slice_of!(a_log, self.a_log, T);
        slice_of!(ow, self.out_proj.w, T);
        opt_slice_of!(ob, self.out_proj.b, T);

        let gate = matmul_t(xs, hd, gw, gb);
        let xi = matmul_t(xs, hd, iw, ib);
        // Shift the window left by one and append the new input; convolve.
        let mut window = vec![T::default(); b * d * w];
        let mut xc = vec![T::default(); b * d];
        for r in 0..b * d {
            let (old, new) = (&cs[r * w..(r + 1) * w], &mut window[r * w..(r + 1) * w]);
            let taps = &cw[(r % d) * w..(r % d + 1) * w];
            let bias = cb.map_or(T::default(), |cb| cb[r % d]);
            xc[r] = conv_step(old, xi[r], taps, bias, new);
        }
        let rz = matmul_t(&xc, d, rw, rb);
        let iz = matmul_t(&xc, d, qw, qb);
        let cla: Vec<T> = a_log
            .iter()
            .map(|&a| T::c(self.cfg.c) * log_sigmoid(a))
            .collect();
        let mut hn = vec![T::default(); b * d];
        let mut yg = vec![T::default(); b * d];
        let rows = rz
            .chunks_exact(d)
            .zip(iz.chunks_exact(d))
            .zip(xc.chunks_exact(d));
        let state = hs.chunks_exact(d).zip(gate.chunks_exact(d));
        let outs = hn.chunks_exact_mut(d).zip(yg.chunks_exact_mut(d));
        for (((rz, iz), xc), ((hs, gate), (hn, yg))) in rows.zip(state.zip(outs)) {
            update((rz, iz, xc), (hs, gate), &cla, hn, yg);
        }
        let y = matmul_t(&yg, d, ow, ob);
        let dev = Device::Cpu;
        Ok((
            Tensor::from_vec(y, (b, hd), &dev)?,
            Tensor::from_vec(window, (b, d, w), &dev)?,
            Tensor::from_vec(hn, (b, d, 1), &dev)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// The slice step and the tensor-op step (used off the CPU) agree.
    #[test]
    fn slice_step_equals_tensor_step() {
        for (w, bias) in [(4, false), (1, true), (3, true)] {
            let (m, _store) = crate::rglru::test_layer(3, w, bias);
            let dev = Device::Cpu;
            let x = Tensor::randn(0f64, 1.0, (3, 6), &dev).unwrap();
            let conv = Tensor::randn(0f64, 1.0, (3, 9, w), &dev).unwrap();
            let h = Tensor::randn(0f64, 1.0, (3, 9, 1), &dev).unwrap();
            let a = m.step_cpu(&x, &conv, &h).unwrap().unwrap();
            let b = m.step_tensors(&x, &conv, &h).unwrap();
            for (p, q) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)] {
                let err = lrnnx_testing::max_abs_diff(p, q);
                assert!(err < 1e-12, "W={w}: {err}");
            }
        }
    }
}
