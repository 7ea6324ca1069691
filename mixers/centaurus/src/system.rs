//! The discrete system of each mode: transition, input and output maps, kernels.
//!
//! Notation: `N` states, `M` sub-states each, `H = d_model`, `S` the number of
//! real "state channels" the convolution runs on (`N`, or `N·M` for `pw`).

use candle_core::{Tensor, D};
use lrnnx_framework::layers::project;
use lrnnx_framework::Result;
use lrnnx_kernels::scan::complex_diag_scan;

use crate::centaurus::zero_state;
use crate::{Centaurus, Mode};

impl Centaurus {
    /// `(δ·Re A, δ·Im A)`, each `(N, M)`.
    fn delta_a(&self) -> Result<(Tensor, Tensor)> {
        let delta = self.log_delta.exp()?.unsqueeze(1)?;
        let re = self.a.narrow(2, 0, 1)?.squeeze(2)?;
        let im = self.a.narrow(2, 1, 1)?.squeeze(2)?;
        Ok((re.broadcast_mul(&delta)?, im.broadcast_mul(&delta)?))
    }

    /// `Ā = exp(δA)` in the scan's split layout `(2·N·M)`: real parts then
    /// imaginary parts, sub-state `(n, m)` at `n·M + m`.
    pub(crate) fn lambda(&self) -> Result<Tensor> {
        let (dr, di) = self.delta_a()?;
        let modulus = dr.exp()?;
        let re = (&modulus * di.cos()?)?.flatten_all()?;
        let im = (&modulus * di.sin()?)?.flatten_all()?;
        Ok(Tensor::cat(&[re, im], 0)?)
    }

    /// The Euler input weights `δ·B`: `(N, H)` for neck, `(N·M, H)` for pw
    /// (`δ` repeated over the sub-states), `(H)` for dws, `(N)` for full.
    pub(crate) fn b_bar(&self) -> Result<Tensor> {
        let delta = self.log_delta.exp()?;
        Ok(match self.cfg.mode {
            Mode::Neck => self.b.broadcast_mul(&delta.unsqueeze(1)?)?,
            Mode::Pw => {
                let (n, m) = (self.cfg.d_state, self.cfg.sub_state_dim);
                let rep = delta
                    .unsqueeze(1)?
                    .broadcast_as((n, m))?
                    .reshape((n * m, 1))?;
                self.b.broadcast_mul(&rep)?
            }
            Mode::Dws | Mode::Full => (&self.b * delta)?,
        })
    }

    /// `u = B̄ x`: `x (.., H)` to `(.., S)`, real.
    /// In `x`'s dtype (`b_bar` is cast).
    pub(crate) fn input(&self, x: &Tensor, b_bar: &Tensor) -> Result<Tensor> {
        let b_bar = &b_bar.to_dtype(x.dtype())?;
        match self.cfg.mode {
            Mode::Neck | Mode::Pw => project(x, b_bar, None),
            Mode::Dws => Ok(x.broadcast_mul(b_bar)?),
            Mode::Full => {
                let h2 = self.d_model * self.d_model;
                let idx = self.full_index()?;
                let u = x
                    .contiguous()?
                    .index_select(&idx, x.rank() - 1)?
                    .broadcast_mul(&b_bar.narrow(0, 0, h2)?)?;
                let extra = self.cfg.d_state - h2;
                if extra == 0 {
                    return Ok(u);
                }
                // States past d_model² have no input (inert, as in lrnnx).
                let mut zdims = u.dims().to_vec();
                if let Some(last) = zdims.last_mut() {
                    *last = extra;
                }
                let z = Tensor::zeros(zdims, u.dtype(), u.device())?;
                Ok(Tensor::cat(&[&u, &z], u.rank() - 1)?)
            }
        }
    }

    /// The input channel of state `s < H²`: `s % H`, as `u32` indices.
    fn full_index(&self) -> Result<Tensor> {
        let h = self.d_model;
        let idx: Vec<u32> = (0..h * h).map(|s| (s % h) as u32).collect();
        Ok(Tensor::from_vec(idx, h * h, self.b.device())?)
    }

    /// The scan input `(.., 2·N·M)` (split complex) from `u (.., S)`: each
    /// state's input copied to its `M` sub-states (pw lanes already are
    /// sub-states) as real parts, zero imaginary parts; one pass.
    pub(crate) fn to_substates(&self, u: &Tensor) -> Result<Tensor> {
        let (n, m) = (self.cfg.d_state, self.cfg.sub_state_dim);
        let mut lead = u.dims().to_vec();
        lead.pop();
        // (.., 1, N, 1) or (.., 1, N·M) times the mask (2, N, M) or (2, N·M).
        let mut src = lead.clone();
        let mask_dims: Vec<usize> = if self.e.is_some() {
            src.extend([1, n, 1]);
            vec![2, n, m]
        } else {
            src.extend([1, n * m]);
            vec![2, n * m]
        };
        let half = n * m;
        let mut mv = vec![1f32; half];
        mv.resize(2 * half, 0.0);
        let mask = Tensor::from_vec(mv, mask_dims, u.device())?.to_dtype(u.dtype())?;
        let mut out = lead;
        out.push(2 * half);
        Ok(u.reshape(src)?.broadcast_mul(&mask)?.reshape(out)?)
    }

    /// `Σ_m E[n,m] Re h[.., n, m]`: scan states `(.., 2·N·M)` (split) to
    /// `(.., S)`, in `h`'s dtype (`E` is cast).
    pub(crate) fn mix(&self, h: &Tensor) -> Result<Tensor> {
        let (n, m) = (self.cfg.d_state, self.cfg.sub_state_dim);
        let last = h.rank() - 1;
        let Some(e) = &self.e else {
            return Ok(h.narrow(last, 0, n * m)?);
        };
        let mut dims = h.dims().to_vec();
        dims.pop();
        let mut wide = dims.clone();
        wide.extend([2, n, m]);
        let re = h.reshape(wide)?.narrow(last, 0, 1)?; // (.., 1, N, M)
        dims.push(n);
        let e = e.to_dtype(h.dtype())?;
        Ok(re.broadcast_mul(&e)?.sum(D::Minus1)?.reshape(dims)?)
    }

    /// `y = C_eff z`: `z (.., S)` to `(.., H)`, in `z`'s dtype (`C` is cast).
    pub(crate) fn readout(&self, z: &Tensor) -> Result<Tensor> {
        let c = &self.c.to_dtype(z.dtype())?;
        match self.cfg.mode {
            Mode::Neck | Mode::Pw => project(z, c, None),
            Mode::Dws => Ok(z.broadcast_mul(c)?),
            Mode::Full => {
                let h = self.d_model;
                let last = z.rank() - 1;
                let prod = z
                    .narrow(last, 0, h * h)?
                    .broadcast_mul(&c.narrow(0, 0, h * h)?)?;
                let mut dims = z.dims().to_vec();
                dims.pop();
                dims.extend([h, h]);
                Ok(prod.reshape(dims)?.sum(D::Minus1)?)
            }
        }
    }

    /// The real kernel on the state channels, `(S, len)`:
    /// `K[n,l] = Σ_m E[n,m] Re(Ā[n,m]^l)` (pw: `K[s,l] = Re(Ā_s^l)`), as the
    /// impulse response of the scan (cheaper than `exp`/`cos` per tap, and
    /// differentiable through the scan's backward).
    pub(crate) fn state_kernel(&self, len: usize) -> Result<Tensor> {
        let half = self.cfg.d_state * self.cfg.sub_state_dim;
        let lambda = self.lambda()?;
        let (dtype, dev) = (lambda.dtype(), lambda.device());
        if len == 0 {
            let s = if self.e.is_some() {
                self.cfg.d_state
            } else {
                half
            };
            return Ok(Tensor::zeros((s, 0), dtype, dev)?);
        }
        let impulse = Tensor::cat(
            &[
                Tensor::ones((1, 1, half), dtype, dev)?,
                Tensor::zeros((1, 1, half), dtype, dev)?,
            ],
            2,
        )?
        .pad_with_zeros(1, 0, len - 1)?;
        let h0 = zero_state(&impulse)?;
        let powers = complex_diag_scan(&impulse, &lambda, Some(&h0))?.squeeze(0)?; // (len, 2·N·M): Ā^l
        Ok(self.mix(&powers)?.t()?.contiguous()?)
    }

    /// The input-output kernel `(H_out, H_in, len)`:
    /// `K_io[o,i,l] = Σ_s C_eff[o,s] K[s,l] B̄[s,i]`.
    pub(crate) fn io_kernel(&self, len: usize) -> Result<Tensor> {
        let h = self.d_model;
        let k = self.state_kernel(len)?; // (S, len), in the scan's accumulation dtype
        let b_bar = self.b_bar()?.to_dtype(k.dtype())?;
        let c = &self.c.to_dtype(k.dtype())?;
        match self.cfg.mode {
            Mode::Neck | Mode::Pw => {
                // (len, H, S) * ... @ (S, H) -> (len, H, H)
                let ck = c.unsqueeze(0)?.broadcast_mul(&k.t()?.unsqueeze(1)?)?;
                let kio = ck.broadcast_matmul(&b_bar)?;
                Ok(kio.permute((1, 2, 0))?.contiguous()?)
            }
            Mode::Dws => {
                let g = k.broadcast_mul(&(c * &b_bar)?.unsqueeze(1)?)?; // (H, len)
                let eye = Tensor::eye(h, g.dtype(), g.device())?.unsqueeze(2)?;
                Ok(eye.broadcast_mul(&g.unsqueeze(1)?)?)
            }
            Mode::Full => {
                let h2 = h * h;
                let gain = (c.narrow(0, 0, h2)? * b_bar.narrow(0, 0, h2)?)?;
                let g = k.narrow(0, 0, h2)?.broadcast_mul(&gain.unsqueeze(1)?)?;
                Ok(g.reshape((h, h, len))?)
            }
        }
    }
}
