//! The plumbing S4 and S4D share around their SSMs: building the block from
//! the arguments, picking the forward mode, the convolution path, and the
//! forward / prefill / step passes through the wrapper, each layer handing
//! in only its SSM part.

use candle_core::{DType, Device, Tensor};
use lrnnx_framework::{
    check_sequence, check_step_input, match_step_rank, Error, ForwardOpts, MixerState,
    ParamBuilder, Result,
};
use lrnnx_kernels::fft_conv::causal_conv;

use super::{mask_lengths, SsmBlockConfig, SsmDisc, SsmParams, SsmWrapper};

/// How a forward pass is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    /// The layer picks by length (S4 also by batch, S4D also by device): the
    /// recurrence below its `AUTO_CONV_FROM` positions, the convolution from
    /// there on.
    Auto,
    /// The recurrence over the input.
    Scan,
    /// The kernel (the recurrence's impulse response), then a causal FFT convolution.
    Conv,
}

impl ForwardMode {
    /// The mode `forward_mode` names: `"scan"`, `"conv"`, else `Auto`
    /// (the arguments' validation refuses other names first).
    pub fn parse(forward_mode: &str) -> Self {
        match forward_mode {
            "scan" => Self::Scan,
            "conv" => Self::Conv,
            _ => Self::Auto,
        }
    }
}

/// An S4-family layer less its SSM's own computation: its arguments, the SSM
/// parameters, the wrapper around them and the forward mode.
#[derive(Debug)]
pub struct SsmBlock<Disc> {
    /// The layer's arguments, as given.
    pub cfg: SsmBlockConfig<Disc>,
    /// The layer's registered name, for errors.
    pub name: &'static str,
    /// Model width `H`.
    pub d_model: usize,
    /// Complex modes per feature, `N/2`.
    pub n2: usize,
    /// How the forward is computed.
    pub mode: ForwardMode,
    /// The SSM parameters.
    pub ssm: SsmParams,
    /// The block around the SSM.
    pub wrapper: SsmWrapper,
}

impl<Disc: SsmDisc> SsmBlock<Disc> {
    /// Validates `cfg` and draws the parameters in lrnnx's order: the
    /// bottleneck linear, the SSM parameters, then the rest of the wrapper.
    pub fn new(
        name: &'static str,
        d_model: usize,
        cfg: SsmBlockConfig<Disc>,
        pb: &ParamBuilder,
    ) -> Result<Self> {
        cfg.validate(d_model).map_err(Error::Config)?;
        let wopts = cfg.wrapper_opts(d_model);
        let input_linear = SsmWrapper::build_bottleneck(&wopts, pb)?;
        let ssm = SsmParams::new(cfg.spec(d_model).map_err(Error::Config)?, pb)?;
        let wrapper = SsmWrapper::new(wopts, input_linear, pb)?;
        Ok(Self {
            name,
            d_model,
            n2: cfg.d_state / 2,
            mode: cfg.forward_mode(),
            ssm,
            wrapper,
            cfg,
        })
    }

    /// SSM output channels per feature.
    pub fn channels(&self) -> usize {
        self.cfg.channels
    }

    /// The mode used for a sequence of length `l`: `Auto` is the convolution
    /// when `l_max` truncates the kernel or when `conv_pays` (the layer's own
    /// rule), else the recurrence; the recurrence cannot run past `l_max`.
    pub fn pick(&self, l: usize, conv_pays: bool) -> Result<ForwardMode> {
        let truncated = self.cfg.l_max.is_some_and(|m| l > m);
        match self.mode {
            ForwardMode::Scan if truncated => Err(Error::Config(format!(
                "{} forward_mode = \"scan\" cannot run L = {l} > l_max = {}: lrnnx then drops the \
                 kernel taps past l_max, which only the convolution reproduces",
                self.name,
                self.cfg.l_max.unwrap_or(0)
            ))),
            ForwardMode::Auto if truncated || conv_pays => Ok(ForwardMode::Conv),
            ForwardMode::Auto => Ok(ForwardMode::Scan),
            m => Ok(m),
        }
    }

    /// Kernel taps used on a sequence of length `l` (at most `l_max`).
    pub fn taps(&self, l: usize) -> usize {
        self.cfg.l_max.map_or(l, |m| m.min(l))
    }

    /// Causal convolution of `x (B, L, H)` with the kernel `k (channels*H, taps)`
    /// (row `c*H + h`): `(B, L, channels, H)`.
    pub fn conv(&self, x: &Tensor, k: &Tensor) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let c = self.channels();
        let xr = if c > 1 {
            Tensor::cat(&vec![x.clone(); c], 2)?
        } else {
            x.clone()
        };
        Ok(causal_conv(&xr, k)?.reshape((b, l, c, h))?)
    }

    /// The empty kernel `(channels*H, 0)`.
    pub fn empty_kernel(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        Ok(Tensor::zeros(
            (self.channels() * self.d_model, 0),
            dtype,
            device,
        )?)
    }

    /// The block over `x (B, L, H)` in `x`'s dtype (the compute dtype: the
    /// parameters are cast to it at use): shape check, `lengths` mask, the wrapper's input part, `ssm` (from the SSM's input
    /// `(B, L, H)` to `(B, L, channels, H)`), the wrapper's output part, back
    /// to `x`'s dtype. An empty sequence gives an empty output without `ssm`.
    pub fn forward(
        &self,
        x: &Tensor,
        opts: &ForwardOpts,
        ssm: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        check_sequence(x, self.d_model, &format!("{} input", self.name))?;
        let x = mask_lengths(x, opts.lengths.as_ref())?;
        let (b, l, _) = x.dims3()?;
        if l == 0 {
            return Ok(Tensor::zeros(
                (b, 0, self.wrapper.output_width()),
                dtype,
                x.device(),
            )?);
        }
        let (xs, v) = self.wrapper.input(&x)?;
        let y = ssm(&xs)?;
        Ok(self.wrapper.output(&y, &xs, v.as_ref())?.to_dtype(dtype)?)
    }

    /// [`Self::forward`] carrying `state` on: `ssm` also gets the state and
    /// updates it; the state's offset moves on by `L`.
    pub fn prefill(
        &self,
        x: &Tensor,
        state: &mut MixerState,
        opts: &ForwardOpts,
        ssm: impl FnOnce(&Tensor, &mut MixerState) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.forward(x, opts, |xs| {
            let y = ssm(xs, state)?;
            state.seqlen_offset += xs.dim(1)?;
            Ok(y)
        })
    }

    /// One position `x (B, H)` or `(B, 1, H)` through the block: `ssm` takes
    /// the SSM's input `(B, H)` and the state and gives `(B, channels, H)`;
    /// the output has `x`'s rank and dtype, the state's offset moves on by 1.
    pub fn step(
        &self,
        x: &Tensor,
        state: &mut MixerState,
        ssm: impl FnOnce(&Tensor, &mut MixerState) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let x2 = check_step_input(x, self.d_model, &format!("{} step input", self.name))?;
        let dtype = x.dtype();
        let (xs, v) = self.wrapper.input(&x2)?;
        let y = ssm(&xs, state)?;
        state.seqlen_offset += 1;
        let y = self.wrapper.output(&y, &xs, v.as_ref())?;
        match_step_rank(y.to_dtype(dtype)?, x)
    }
}

/// Every element of `t` as `f64`, flattened (for the plain-loop paths).
pub fn f64_values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}
