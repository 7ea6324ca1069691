//! The traits every sequence mixer implements.

use std::fmt::Debug;

use candle_core::{DType, Device, Tensor};

use crate::{Discretization, MixerState, Result};

/// Which kind of sequence map a mixer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    /// Linear time-invariant: a convolution with a fixed kernel (S4, S5, LRU, ...).
    Lti,
    /// Linear time-varying: input-dependent transitions (Mamba, RG-LRU, S7, ...).
    Ltv,
    /// Softmax attention.
    Attention,
    /// Anything else (mLSTM, plugins, ...).
    Other,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Family::Lti => "LTI",
            Family::Ltv => "LTV",
            Family::Attention => "attention",
            Family::Other => "other",
        };
        f.write_str(s)
    }
}

/// Options of a full-sequence forward pass.
#[derive(Debug, Clone, Default)]
pub struct ForwardOpts {
    /// Time between events, `(B, L)`, for event-driven (asynchronous) discretization.
    pub integration_timesteps: Option<Tensor>,
    /// Valid length of each sequence, `(B,)` integers; positions past it are padding.
    pub lengths: Option<Tensor>,
}

/// Options of a single decoding step.
#[derive(Debug, Clone, Default)]
pub struct StepOpts {
    /// Time since the previous event, `(B,)` or `(B, 1)`.
    pub integration_timesteps: Option<Tensor>,
}

/// A sequence-to-sequence layer on `(B, L, H)` tensors.
///
/// `forward` processes whole sequences in parallel; `step` consumes one
/// position with O(1) state (for attention: a KV cache). For every mixer,
/// running `step` over positions `0..L` from [`Mixer::init_state`] gives the
/// same outputs as `forward`; the crate tests check this for each.
pub trait Mixer: Send + Sync + Debug {
    /// The registered name of this mixer (`"LRU"`, `"attn"`, ...).
    fn name(&self) -> &str;

    /// The full configuration, every default filled in (serialized as `{"type": name, ...}`).
    fn config(&self) -> &dyn crate::MixerConfig;

    /// Maps `x (B, L, H)` to `y (B, L, H)`.
    fn forward(&self, x: &Tensor, opts: &ForwardOpts) -> Result<Tensor>;

    /// Maps one position, `x (B, H)` or `(B, 1, H)`, to an output of the same
    /// shape, advancing `state`.
    fn step(&self, x: &Tensor, state: &mut MixerState, opts: &StepOpts) -> Result<Tensor>;

    /// Runs the parallel forward over a prompt `x (B, L, H)` and leaves `state`
    /// (fresh from [`Mixer::init_state`]) as if `step` had consumed every
    /// position. The default steps through the prompt; mixers override it with
    /// their parallel form.
    fn prefill(&self, x: &Tensor, state: &mut MixerState, opts: &ForwardOpts) -> Result<Tensor> {
        let (_, l) = (x.dim(0)?, x.dim(1)?);
        let mut ys = Vec::with_capacity(l);
        for t in 0..l {
            let step_opts = StepOpts {
                integration_timesteps: match &opts.integration_timesteps {
                    Some(ts) => Some(ts.narrow(1, t, 1)?),
                    None => None,
                },
            };
            ys.push(self.step(&x.narrow(1, t, 1)?, state, &step_opts)?);
        }
        Ok(Tensor::cat(&ys, 1)?)
    }

    /// A fresh state for `batch` sequences of at most `max_seqlen` positions.
    fn init_state(
        &self,
        batch: usize,
        max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState>;

    /// LTI, LTV, attention or other.
    fn family(&self) -> Family;

    /// This mixer as an LTI system, if it is one.
    fn as_lti(&self) -> Option<&dyn Lti> {
        None
    }

    /// This mixer as an LTV system, if it is one.
    fn as_ltv(&self) -> Option<&dyn Ltv> {
        None
    }
}

/// A linear time-invariant mixer: `y = k * x + D x` for a kernel `k`.
pub trait Lti: Mixer {
    /// The convolution kernel of length `len`, `(H_out, H_in, len)` or `(H, len)` for
    /// channel-wise systems.
    fn kernel(&self, len: usize) -> Result<Tensor>;

    /// How the continuous system was discretized.
    fn discretization(&self) -> Discretization;
}

/// A linear time-varying mixer.
pub trait Ltv: Mixer {
    /// How the input-dependent steps are discretized.
    fn discretization(&self) -> Discretization;

    /// Whether `integration_timesteps` (event mode) is supported.
    fn supports_events(&self) -> bool {
        false
    }
}

/// Checks that `x` is `(B, L, width)` and returns `(B, L)`.
pub fn check_sequence(x: &Tensor, width: usize, what: &str) -> Result<(usize, usize)> {
    match x.dims() {
        &[b, l, h] if h == width => Ok((b, l)),
        d => Err(crate::Error::shape(
            what,
            format!("(batch, seqlen, {width})"),
            d,
        )),
    }
}

/// Checks that `x` is `(B, width)` or `(B, 1, width)` and returns it as a
/// contiguous `(B, width)` (a position narrowed out of a sequence is strided,
/// and candle's CUDA matmul refuses strided operands).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let seq = Tensor::zeros((2, 5, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let x = lrnnx_framework::check_step_input(&seq.narrow(1, 2, 1)?, 3, "step input")?;
/// assert_eq!(x.dims(), &[2, 3]);
/// assert!(x.is_contiguous());
/// # Ok::<(), lrnnx_framework::Error>(())
/// ```
pub fn check_step_input(x: &Tensor, width: usize, what: &str) -> Result<Tensor> {
    match x.dims() {
        &[_, h] if h == width => Ok(x.contiguous()?),
        &[_, 1, h] if h == width => Ok(x.squeeze(1)?.contiguous()?),
        d => Err(crate::Error::shape(
            what,
            format!("(batch, {width}) or (batch, 1, {width})"),
            d,
        )),
    }
}

/// Reshapes a `(B, H)` step output back to the rank of the step input.
pub fn match_step_rank(y: Tensor, input: &Tensor) -> Result<Tensor> {
    if input.rank() == 3 {
        Ok(y.unsqueeze(1)?)
    } else {
        Ok(y)
    }
}
