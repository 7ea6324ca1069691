//! The Centaurus layer: parameters, forward by scan or convolution, step, kernel.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::layers::diagonal::{finish_step, keep_last_state};
use lrnnx_framework::params::random;
use lrnnx_framework::{
    check_sequence, check_step_input, Discretization, Error, Family, ForwardOpts, Init, Lti, Mixer,
    MixerConfig, MixerState, ParamBuilder, Result, StepOpts,
};
use lrnnx_kernels::fft_conv::causal_conv;
use lrnnx_kernels::portable::{accumulation_dtype, portable_forced, widen};
use lrnnx_kernels::scan::complex_diag_scan;

use crate::{CentaurusConfig, ForwardMode, Mode};

/// With `forward_mode = "auto"` on the CPU, neck/dws/full sequences at least
/// this long run as a convolution, shorter ones as a scan (measured at
/// H=256, N=64, M=4: equal at L=8, the convolution 1.5-2.5x faster from L=16 to 16384 at B≥2).
pub const CONV_MIN_LEN: usize = 16;

/// ... except a single sequence (B=1) at least this long, which runs as a
/// scan: building the kernel costs as much as the scan itself, and the FFT
/// grows with `log L` (measured: scan 20-25% faster at L=16384 and 65536).
pub const SCAN_MIN_LEN_SINGLE: usize = 8192;

/// Centaurus (Pei 2025, "Let SSMs be ConvNets") as lrnnx defines it.
///
/// Parameters, under lrnnx's names:
/// - `A (N, M, 2)`: the complex `(N, M)` continuous eigenvalues in PyTorch's
///   `view_as_real` layout (real, imaginary);
/// - `E (N, M)`: sub-state mixing weights (every mode but `pw`);
/// - `log_delta (N)`: log step sizes `δ`;
/// - `B`, `C`: `(N, H)`, `(H, N)` for neck; `(N·M, H)`, `(H, N·M)` for pw;
///   `(H)`, `(H)` for dws; `(N)`, `(N)` for full.
///
/// `lengths` and `integration_timesteps` are accepted and ignored, as in lrnnx.
#[derive(Debug)]
pub struct Centaurus {
    pub(crate) cfg: CentaurusConfig,
    pub(crate) d_model: usize,
    pub(crate) a: Tensor,
    pub(crate) e: Option<Tensor>,
    pub(crate) log_delta: Tensor,
    pub(crate) b: Tensor,
    pub(crate) c: Tensor,
}

/// The zero initial state `(B, 2N)` for scan inputs `u (B, L, 2N)`, in their
/// accumulation dtype. Passed explicitly rather than as `None` so that `Ā`
/// is in the graph at L = 1 on every path (its gradient is zero there, not
/// absent); the fused scan builds the same zeros itself.
pub(crate) fn zero_state(u: &Tensor) -> Result<Tensor> {
    let (b, _, n2) = u.dims3()?;
    Ok(Tensor::zeros(
        (b, n2),
        accumulation_dtype(u.dtype()),
        u.device(),
    )?)
}

/// A `(rows, cols)` tensor of `std`-scaled standard-normal draws `z`.
fn scaled(z: Vec<f64>, shape: (usize, usize), std: f64) -> Result<Tensor> {
    let v: Vec<f32> = z.into_iter().map(|z| (z * std) as f32).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

impl Centaurus {
    /// Builds the layer, initialising parameters as lrnnx does unless `pb` loads them.
    pub fn new(d_model: usize, cfg: CentaurusConfig, pb: &ParamBuilder) -> Result<Self> {
        cfg.validate(d_model).map_err(Error::Config)?;
        let (n, m, h) = (cfg.d_state, cfg.sub_state_dim, d_model);
        let cpu = Device::Cpu;
        // A = -0.5 + i·m·π/M for every state; complex64 in lrnnx's state dict.
        pb.mark_complex("A");
        let a = pb.get_with((n, m, 2), "A", |_| {
            let v: Vec<f32> = (0..n * m)
                .flat_map(|s| {
                    [
                        -0.5,
                        ((s % m) as f64 * std::f64::consts::PI / m as f64) as f32,
                    ]
                })
                .collect();
            Ok(Tensor::from_vec(v, (n, m, 2), &cpu)?)
        })?;
        let e = match cfg.mode {
            Mode::Pw => None,
            _ => Some(pb.get_with((n, m), "E", |rng| {
                scaled(random::normal(rng, n * m), (n, m), 2f64.sqrt())
            })?),
        };
        // ln(logspace(-3, -1, N)).
        let log_delta = pb.get_with(n, "log_delta", |_| {
            let ln10 = 10f64.ln();
            let v: Vec<f32> = (0..n)
                .map(|k| {
                    let frac = if n > 1 {
                        k as f64 / (n - 1) as f64
                    } else {
                        0.0
                    };
                    (ln10 * (-3.0 + 2.0 * frac)) as f32
                })
                .collect();
            Ok(Tensor::from_vec(v, n, &cpu)?)
        })?;
        let (b, c) = match cfg.mode {
            Mode::Neck => (
                pb.get((n, h), "B", Init::TorchDefault { fan_in: h })?,
                pb.get((h, n), "C", Init::TorchDefault { fan_in: n })?,
            ),
            Mode::Dws => (pb.get(h, "B", Init::Ones)?, pb.get(h, "C", Init::Ones)?),
            Mode::Full => (
                pb.get_with(n, "B", |rng| {
                    scaled(random::normal(rng, n), (n, 1), (2.0 / h as f64).sqrt())?
                        .reshape(n)
                        .map_err(Into::into)
                })?,
                pb.get_with(n, "C", |rng| {
                    scaled(random::normal(rng, n), (n, 1), (2.0 / n as f64).sqrt())?
                        .reshape(n)
                        .map_err(Into::into)
                })?,
            ),
            Mode::Pw => (
                pb.get((n * m, h), "B", Init::Const(1.0 / (h as f64).sqrt()))?,
                pb.get_with((h, n * m), "C", |rng| {
                    let std = (2.0 / (n * m) as f64).sqrt();
                    scaled(random::normal(rng, h * n * m), (h, n * m), std)
                })?,
            ),
        };
        Ok(Self {
            cfg,
            d_model,
            a,
            e,
            log_delta,
            b,
            c,
        })
    }

    /// Number of states `N`.
    pub fn d_state(&self) -> usize {
        self.cfg.d_state
    }

    /// Sub-states per state `M`.
    pub fn sub_state_dim(&self) -> usize {
        self.cfg.sub_state_dim
    }

    /// The mode (neck, pw, dws, full).
    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    /// The algorithm `forward` uses for `batch` sequences of `len` positions on `device`.
    ///
    /// `auto`: the scan where the fused FFT convolution does not run (off the
    /// CPU, and under [`lrnnx_kernels::portable::with_portable`]: the portable
    /// convolution builds an `L x L` Toeplitz matrix per channel, which the
    /// scan beats) and for pw (its kernel has as many channels as the scan,
    /// and the scan measured faster at every length); otherwise the
    /// convolution from [`CONV_MIN_LEN`] positions on, unless `batch == 1`
    /// and `len >=` [`SCAN_MIN_LEN_SINGLE`].
    pub fn resolve_forward_mode(&self, batch: usize, len: usize, device: &Device) -> ForwardMode {
        match self.cfg.forward_mode {
            ForwardMode::Auto => {
                let conv = device.is_cpu()
                    && !portable_forced()
                    && self.cfg.mode != Mode::Pw
                    && len >= CONV_MIN_LEN
                    && (batch > 1 || len < SCAN_MIN_LEN_SINGLE);
                if conv {
                    ForwardMode::Conv
                } else {
                    ForwardMode::Scan
                }
            }
            other => other,
        }
    }

    /// `forward` with the algorithm chosen here instead of by the config
    /// (`Auto` as in the config). Both give the same result up to rounding.
    ///
    /// The input and output maps run in `x`'s dtype (the parameters are cast
    /// at use); the states (scan) or state channels (convolution) are
    /// computed in `x`'s accumulation dtype (f32 for bf16/f16). `conv` runs
    /// the fused FFT convolution on the CPU and the portable Toeplitz one
    /// elsewhere, which refuses lengths past its budget (use `scan` there).
    pub fn forward_by(&self, x: &Tensor, how: ForwardMode) -> Result<Tensor> {
        let (b, l) = self.check(x)?;
        if l == 0 {
            return Ok(Tensor::zeros((b, 0, self.d_model), x.dtype(), x.device())?);
        }
        let how = match how {
            ForwardMode::Auto => match self.cfg.forward_mode {
                ForwardMode::Auto => self.resolve_forward_mode(b, l, x.device()),
                fixed => fixed,
            },
            fixed => fixed,
        };
        let y = match how {
            ForwardMode::Conv => self.run_conv(x)?,
            _ => self.run_scan(x, None, &self.lambda()?, &self.b_bar()?)?.0,
        };
        Ok(y)
    }

    /// Scan form from `h0 (B, 2·N·M)`: outputs `(B, L, H)` and every state `(B, L, 2·N·M)`.
    fn run_scan(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        lambda: &Tensor,
        b_bar: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let u = self.to_substates(&self.input(x, b_bar)?)?;
        let h0 = match h0 {
            Some(h0) => h0.clone(),
            None => zero_state(&u)?,
        };
        let h = complex_diag_scan(&u, lambda, Some(&h0))?;
        let z = self.mix(&h)?.to_dtype(x.dtype())?;
        Ok((self.readout(&z)?, h))
    }

    /// Convolution form: `y = C_eff (K * B̄x)` with the real state kernel
    /// `K (S, L)`, convolved in the accumulation dtype.
    fn run_conv(&self, x: &Tensor) -> Result<Tensor> {
        let l = x.dim(1)?;
        let u = widen(&self.input(x, &self.b_bar()?)?)?;
        let v = causal_conv(&u, &self.state_kernel(l)?)?;
        self.readout(&v.to_dtype(x.dtype())?)
    }

    fn check(&self, x: &Tensor) -> Result<(usize, usize)> {
        check_sequence(x, self.d_model, "Centaurus input")
    }

    fn state_dims(&self, batch: usize) -> (usize, usize, usize, usize) {
        (batch, 2, self.cfg.d_state, self.cfg.sub_state_dim)
    }

    /// The scan's flat states `h (B, L, 2NM)` as `(B, L, 2, N, M)`, each
    /// position in the decoding state's layout.
    fn per_position(&self, h: &Tensor) -> Result<Tensor> {
        let (b, l, _) = h.dims3()?;
        let (_, two, n, m) = self.state_dims(b);
        Ok(h.reshape((b, l, two, n, m))?)
    }
}

impl Mixer for Centaurus {
    fn name(&self) -> &str {
        crate::NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        self.forward_by(x, self.cfg.forward_mode)
    }

    /// Always the scan form (it yields the final state).
    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (b, l) = self.check(x)?;
        if l == 0 {
            return Ok(Tensor::zeros((b, 0, self.d_model), x.dtype(), x.device())?);
        }
        let h0 = state.get("h")?.reshape((b, ()))?;
        let (lambda, b_bar) = (state.get("lambda")?.clone(), state.get("b_bar")?.clone());
        let (y, h) = self.run_scan(x, Some(&h0), &lambda, &b_bar)?;
        keep_last_state(state, &self.per_position(&h)?, l)?;
        Ok(y)
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        let x2 = check_step_input(x, self.d_model, "Centaurus step input")?;
        let b = x2.dim(0)?;
        let h0 = state.get("h")?.reshape((b, ()))?;
        let (lambda, b_bar) = (state.get("lambda")?.clone(), state.get("b_bar")?.clone());
        let xs = x2.unsqueeze(1)?;
        let (y, h) = self.run_scan(&xs, Some(&h0), &lambda, &b_bar)?;
        finish_step(state, &y, &self.per_position(&h)?, x)
    }

    /// State `h (B, 2, N, M)`: the complex sub-states, real parts then
    /// imaginary parts (flattened, the scan's split layout), in the
    /// accumulation dtype of `dtype` (f32 for bf16/f16), plus `lambda`
    /// (`Ā`, split) and `b_bar` (`δB`), computed once here as lrnnx's
    /// `allocate_inference_cache` does.
    fn init_state(
        &self,
        batch: usize,
        _max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        let h = Tensor::zeros(self.state_dims(batch), accumulation_dtype(dtype), device)?;
        Ok(MixerState::new()
            .with("h", h)
            .with("lambda", self.lambda()?.to_device(device)?)
            .with("b_bar", self.b_bar()?.to_device(device)?))
    }

    fn family(&self) -> Family {
        Family::Lti
    }

    fn as_lti(&self) -> Option<&dyn Lti> {
        Some(self)
    }
}

impl Lti for Centaurus {
    /// The input-output kernel `(H, H, len)`: `K[o, i, t] = Σ_s C_eff[o,s] K_s[t] δ_s B_eff[s,i]`
    /// (diagonal for dws; for full, entry `(o, i)` is state `o·H + i` alone).
    fn kernel(&self, len: usize) -> Result<Tensor> {
        self.io_kernel(len)
    }

    /// `exp(δA)` on the state and the Euler step `δB` on the input, whatever
    /// the `discretization` argument says (as in lrnnx): the `Mamba` rule.
    fn discretization(&self) -> Discretization {
        Discretization::Mamba
    }
}
