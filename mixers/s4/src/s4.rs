//! The S4 layer: parameters (with lrnnx's `C~` convention converted on
//! load), forward by recurrence or by convolution, step, kernel.

use crate::ssm::{f64_values, SsmBlock};
use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::{
    Discretization, Error, Family, ForwardOpts, Lti, Mixer, MixerConfig, MixerState, ParamBuilder,
    Result, StepOpts,
};
use num_complex::Complex64;

use crate::config::S4Disc;
use crate::ctilde;
use crate::dplr::{self, dplr_scan, Dims};
use crate::dplr_portable::{self as portable, Dense, StepMap};
pub use crate::ssm::ForwardMode;
use crate::S4Config;
use lrnnx_kernels::portable::{accumulation_dtype, use_fused_cpu, widen};

/// Below this length `forward_mode = "auto"` runs the recurrence, from it on
/// the convolution, except at batch 1 where the recurrence always runs (the
/// kernel is itself a batch-1 run of the recurrence, so the convolution only
/// adds work). Measured on two (shared) CPU cores at B in {1, 8, 32},
/// H in {64, 256}, N in {4, 16, 64}: within noise up to 4 positions, the
/// convolution faster from there on at B >= 8 (2-4x at B = 8, H = 256, N = 64).
pub const AUTO_CONV_FROM: usize = 4;

/// lrnnx's `S4`: a diagonal-plus-low-rank state-space kernel (`S4Kernel`,
/// always bilinear) inside the S4 block. Parameters `inv_dt`, `A_real`,
/// `A_imag`, `B`, `C`, `P` (also under `layer.kernel.*`), the buffer
/// `layer.kernel.l_kernel`, `D`, `output_linear.0.*` (and the gate /
/// bottleneck linears when configured).
///
/// **`C` and `l_kernel`.** lrnnx stores `C~ = C (I - Ā^l)` with `l =
/// l_kernel` once it has run a forward (`l_kernel = 0` means `C` is the true
/// one). On load this layer converts `C~` to the true `C`, writes it into the
/// parameter and sets `l_kernel` to 0, so that the saved pair stays
/// consistent for lrnnx; training then works on the true `C`.
#[derive(Debug)]
pub struct S4 {
    block: SsmBlock<S4Disc>,
}

impl S4 {
    /// Builds the layer, drawing parameters as lrnnx does unless `pb` loads them.
    pub fn new(d_model: usize, cfg: S4Config, pb: &ParamBuilder) -> Result<Self> {
        let layer = Self {
            block: SsmBlock::new(crate::NAME, d_model, cfg, pb)?,
        };
        let l_kernel = pb.buffer("layer.kernel.l_kernel", || {
            Ok(Tensor::new(0i64, &Device::Cpu)?)
        })?;
        let lk = f64_values(&l_kernel)?.first().copied().unwrap_or(0.0);
        if lk > 0.0 {
            layer.untilde_c(lk as usize, pb)?;
            pb.set_buffer("layer.kernel.l_kernel", Tensor::new(0i64, pb.device())?);
        }
        Ok(layer)
    }

    /// Replaces the stored `C~` by the true `C` (see the type's docs).
    fn untilde_c(&self, l_kernel: usize, pb: &ParamBuilder) -> Result<()> {
        let (h, n2, ch) = (self.block.d_model, self.block.n2, self.block.channels());
        let rows = f64_values(&self.packed()?)?;
        let k = dplr::FIXED + 2 * ch;
        let mut c_true = vec![0.0; ch * h * n2 * 2];
        for hi in 0..h {
            let r = &rows[hi * n2 * k..(hi + 1) * n2 * k];
            let col = |j: usize| -> Vec<Complex64> {
                (0..n2)
                    .map(|n| Complex64::new(r[n * k + j], r[n * k + j + 1]))
                    .collect()
            };
            let dt: Vec<f64> = (0..n2).map(|n| r[n * k + 6]).collect();
            let ct: Vec<Vec<Complex64>> = (0..ch).map(|c| col(dplr::FIXED + 2 * c)).collect();
            let c = ctilde::true_c(&col(0), &col(2), &dt, &ct, l_kernel).ok_or_else(|| {
                Error::Config(format!(
                    "S4: cannot recover C from the stored C~ (l_kernel = {l_kernel}): I - Ā^l is singular for feature {hi}"
                ))
            })?;
            for (ci, cv) in c.iter().enumerate() {
                for (n, z) in cv.iter().enumerate() {
                    let at = ((ci * h + hi) * n2 + n) * 2;
                    c_true[at] = z.re;
                    c_true[at + 1] = z.im;
                }
            }
        }
        let var: Var = pb
            .store()
            .vars()
            .get(&pb.key("C"))
            .cloned()
            .ok_or_else(|| Error::Config("S4: parameter C was not registered".into()))?;
        let t = Tensor::from_vec(c_true, (ch, h, n2, 2), &Device::Cpu)?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t)?;
        Ok(())
    }

    /// Overrides the forward mode (e.g. to compare scan and convolution).
    pub fn set_forward_mode(&mut self, mode: ForwardMode) {
        self.block.mode = mode;
    }

    /// Complex modes per feature, `N/2`.
    pub fn n2(&self) -> usize {
        self.block.n2
    }

    /// The op's packed parameters `(H, N/2, 7 + 2*channels)`, differentiable.
    fn packed(&self) -> Result<Tensor> {
        let (h, n2, ssm) = (self.block.d_model, self.block.n2, &self.block.ssm);
        let dt = ssm.dt()?.broadcast_as((h, n2))?.contiguous()?;
        let (lr, li) = ssm.lambda()?;
        let (pr, pi) = ssm.p()?.ok_or_else(|| Error::Config("S4 needs P".into()))?;
        let (br, bi) = ssm.b()?;
        let (cr, ci) = ssm.c()?;
        let mut cols = vec![lr, li, pr.squeeze(0)?, pi.squeeze(0)?, br, bi, dt];
        for c in 0..self.block.channels() {
            cols.push(cr.narrow(0, c, 1)?.squeeze(0)?);
            cols.push(ci.narrow(0, c, 1)?.squeeze(0)?);
        }
        Ok(Tensor::stack(&cols, 2)?)
    }

    /// The kernel `(channels*H, len)`, row `c*H + h`: the impulse response.
    fn kernel_of(&self, packed: &Tensor, len: usize) -> Result<Tensor> {
        let (h, c) = (self.block.d_model, self.block.channels());
        let dtype = packed.dtype();
        let dev = packed.device();
        let one = Tensor::ones((1, 1, h), dtype, dev)?;
        let delta = if len > 1 {
            Tensor::cat(&[one, Tensor::zeros((1, len - 1, h), dtype, dev)?], 1)?
        } else {
            one
        };
        let k = dplr_scan(&delta, packed, None, c)?; // (1, len, C, H)
        Ok(k.reshape((len, c * h))?.t()?.contiguous()?)
    }

    /// The kernel `(channels*H, len)` on the portable path, in the
    /// accumulation dtype of `dtype`.
    fn portable_kernel(&self, packed: &Tensor, len: usize, dtype: DType) -> Result<Tensor> {
        let packed = packed.to_dtype(accumulation_dtype(dtype))?;
        let map = StepMap::new(&packed, self.block.channels())?;
        Dense::new(&map)?.kernel(len)
    }

    /// The SSM over `x (B, L, H)`: `(B, L, channels, H)`. `auto` is the
    /// recurrence at batch 1 (the kernel is itself a batch-1 run of it).
    /// Off the fused CPU path both modes are the convolution with the
    /// portable kernel (the same map; `scan` still refuses `L > l_max`).
    fn ssm_forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let packed = self.packed()?;
        if !use_fused_cpu(x) {
            self.block.pick(l, true)?;
            let k = self.portable_kernel(&packed, self.block.taps(l), x.dtype())?;
            return self.block.conv(x, &k);
        }
        if self.block.pick(l, b > 1 && l >= AUTO_CONV_FROM)? == ForwardMode::Scan {
            return Ok(dplr_scan(x, &packed, None, self.block.channels())?);
        }
        let k = self.kernel_of(&packed, self.block.taps(l))?;
        self.block.conv(x, &k)
    }

    /// Runs the recurrence without autograd from `state`: `(y (B, L, C, H), new state)`.
    fn run_raw(&self, x: &Tensor, packed: &Tensor, s0: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, l, h) = x.dims3()?;
        let d = Dims {
            b,
            l,
            h,
            n2: self.block.n2,
            c: self.block.channels(),
        };
        let (y, s) = dplr::run(&f64_values(x)?, &f64_values(packed)?, &f64_values(s0)?, d);
        let (dtype, dev) = (x.dtype(), x.device());
        Ok((
            Tensor::from_vec(y, (b, l, d.c, h), dev)?.to_dtype(dtype)?,
            Tensor::from_vec(s, (b, h, d.n2, 2), dev)?.to_dtype(s0.dtype())?,
        ))
    }

    /// The recurrence from the state's `lrnn_state` with its packed `params`;
    /// the new state goes back into it.
    fn run_from_state(&self, x: &Tensor, state: &mut MixerState) -> Result<Tensor> {
        let packed = state.get("params")?.clone();
        let s0 = state.get("lrnn_state")?.clone();
        let (y, s) = if use_fused_cpu(x) {
            self.run_raw(x, &packed, &s0)?
        } else {
            let start = (state.seqlen_offset > 0).then_some(&s0);
            self.run_portable(x, &packed, start)?
        };
        state.set("lrnn_state", s.to_dtype(s0.dtype())?);
        Ok(y)
    }

    /// The recurrence over `x (B, L, H)` from `s0 (B, H, N/2, 2)` (zero when
    /// `None`) with candle ops: the convolution with the full-length kernel,
    /// plus `c Ā^(t+1) s0`; the last state is `Ā^L s0 + sum_t Ā^(L-1-t) B̄ x_t`.
    /// Returns `(y (B, L, C, H)` in `x`'s dtype, the state in the accumulation dtype).
    fn run_portable(
        &self,
        x: &Tensor,
        packed: &Tensor,
        s0: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, l, h) = x.dims3()?;
        let acc = accumulation_dtype(x.dtype());
        let map = StepMap::new(&packed.to_dtype(acc)?, self.block.channels())?;
        if l == 1 {
            return self.step_portable(&x.squeeze(1)?, &map, s0);
        }
        let sys = Dense::new(&map)?;
        let powers = portable::orbit(&sys.a, &sys.b, l)?; // (H, N, L): Ā^j B̄
        let k = self.block.conv(
            x,
            &sys.c.matmul(&powers)?.transpose(0, 1)?.reshape(((), l))?,
        )?;
        let mut y = k.to_dtype(acc)?;
        // x reversed in time, as (H, L, B).
        let rev: Vec<u32> = (0..l as u32).rev().collect();
        let rev = Tensor::from_vec(rev, l, x.device())?;
        let xr = widen(&x.contiguous()?.index_select(&rev, 1)?)?.permute((2, 1, 0))?;
        let mut last = powers.matmul(&xr.contiguous()?)?; // (H, N, B)
        if let Some(s0) = s0 {
            let s = portable::state_to_real(&s0.to_dtype(acc)?)?;
            let decay = portable::orbit(&sys.a, &sys.a.matmul(&s)?, l)?; // (H, N, L*B)
            let ch = self.block.channels();
            let y0 = sys
                .c
                .matmul(&decay)?
                .reshape((h, ch, l, b))?
                .permute((3, 2, 1, 0))?;
            y = (y + y0)?;
            last = (last + decay.narrow(2, (l - 1) * b, b)?)?;
        }
        Ok((y.to_dtype(x.dtype())?, portable::real_to_state(&last)?))
    }

    /// One step of `x (B, H)` from `s0` with candle ops: `(y (B, 1, C, H), state)`.
    fn step_portable(
        &self,
        x: &Tensor,
        map: &StepMap,
        s0: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h) = x.dims2()?;
        let acc = accumulation_dtype(x.dtype());
        let n2 = self.block.n2;
        let s = match s0 {
            Some(s0) => s0.to_dtype(acc)?.transpose(0, 1)?, // (H, B, N/2, 2)
            None => Tensor::zeros((h, b, n2, 2), acc, x.device())?,
        };
        let part = |i: usize| s.narrow(3, i, 1).and_then(|t| t.squeeze(3));
        let s = lrnnx_framework::Complex::new(part(0)?, part(1)?);
        let xs = widen(x)?.t()?.unsqueeze(2)?; // (H, B, 1)
        let next = map.step(&s, Some(&xs))?;
        let real = Tensor::cat(&[&next.re, &next.im], 2)?; // (H, B, N)
        let y = real
            .matmul(&map.readout().t()?)? // (H, B, C)
            .permute((1, 2, 0))?
            .unsqueeze(1)?;
        let state = Tensor::stack(&[&next.re, &next.im], 3)?
            .transpose(0, 1)?
            .contiguous()?;
        Ok((y.to_dtype(x.dtype())?, state))
    }
}

impl Mixer for S4 {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.block.cfg
    }

    fn forward(&self, x: &Tensor, opts: &ForwardOpts) -> Result<Tensor> {
        self.block.forward(x, opts, |xs| self.ssm_forward(xs))
    }

    /// The recurrence over the prompt (parallel over batch and features), from `state`.
    fn prefill(&self, x: &Tensor, state: &mut MixerState, opts: &ForwardOpts) -> Result<Tensor> {
        self.block
            .prefill(x, state, opts, |xs, state| self.run_from_state(xs, state))
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        self.block.step(x, state, |xs, state| {
            Ok(self.run_from_state(&xs.unsqueeze(1)?, state)?.squeeze(1)?)
        })
    }

    /// State `lrnn_state (B, H, N/2, 2)` (the half basis of lrnnx's `(B, H, N)`
    /// complex state, in the accumulation dtype of `dtype`: f32 for bf16/f16) and the packed system `params`, computed once here as
    /// lrnnx's `allocate_inference_cache` does.
    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let s = Tensor::zeros(
            (batch, self.block.d_model, self.block.n2, 2),
            accumulation_dtype(dtype),
            device,
        )?;
        let packed = self.packed()?.detach().to_device(device)?;
        Ok(MixerState::new()
            .with("lrnn_state", s)
            .with("params", packed))
    }

    fn family(&self) -> Family {
        Family::Lti
    }

    fn as_lti(&self) -> Option<&dyn Lti> {
        Some(self)
    }
}

impl Lti for S4 {
    /// `K[c*H + h, l] = Re(C_c Ā^l B̄)` (full conjugate-augmented basis): `(H, len)`
    /// for one channel, `(channels*H, len)` otherwise (rows in `(c h)` order
    /// whatever `swap_channels`); `D` is not included.
    fn kernel(&self, len: usize) -> Result<Tensor> {
        let packed = self.packed()?;
        if len == 0 {
            return self.block.empty_kernel(packed.dtype(), packed.device());
        }
        if !use_fused_cpu(&packed) {
            return self.portable_kernel(&packed, len, packed.dtype());
        }
        self.kernel_of(&packed, len)
    }

    fn discretization(&self) -> Discretization {
        Discretization::Bilinear
    }
}
