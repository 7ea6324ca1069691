//! The block around lrnnx's S4/S4D kernel: gates, linears, `D` skip, GELUs,
//! `lengths` masking.

use candle_core::{DType, Device, Tensor, D};

use lrnnx_framework::layers::{linear, project_linear, Linear};
use lrnnx_framework::params::random;
use lrnnx_framework::{Error, ParamBuilder, Result};

/// Which class's `output_gate` rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateStyle {
    /// `S4`: `Linear(d_model, d_model*gate)`, or the identity when
    /// `d_model*channels == d_model*gate`.
    S4,
    /// `S4D`: `Linear(d_model*channels, d_model*gate)`; lrnnx creates none
    /// (and its forward fails) when the two widths are equal.
    S4d,
}

/// Shape options of the wrapper, from the mixer's constructor kwargs.
#[derive(Debug, Clone)]
pub struct SsmWrapperOpts {
    /// Model width `H`.
    pub d_model: usize,
    /// SSM output channels per feature (`channels`).
    pub channels: usize,
    /// Gate expansion (`gate`).
    pub gate: Option<usize>,
    /// `bottleneck` (only 1 works in lrnnx).
    pub bottleneck: Option<usize>,
    /// Whether there is an output linear (`final_act` or `postact` not None).
    pub output_linear: bool,
    /// Flatten the SSM channels as `(h c)` instead of `(c h)`.
    pub swap_channels: bool,
    /// Which `output_gate` rule applies.
    pub gate_style: GateStyle,
}

impl SsmWrapperOpts {
    /// Checks the combinations lrnnx can run; the message says why.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.channels == 0 {
            return Err("channels must be at least 1, found 0".into());
        }
        if let Some(b) = self.bottleneck {
            if b != 1 {
                return Err(format!(
                    "bottleneck must be None or 1, found {b}: lrnnx builds input_linear as \
                     Linear(d_model/{b}, d_model/{b}) and applies it to d_model features, which fails"
                ));
            }
        }
        if let Some(g) = self.gate {
            if g == 0 {
                return Err("gate must be at least 1, found 0".into());
            }
            let (h, c) = (self.d_model, self.channels);
            match self.gate_style {
                GateStyle::S4 if c > 1 && h * c != h * g => {
                    return Err(format!(
                        "gate = {g} with channels = {c} is not supported: lrnnx's S4 output_gate is \
                         Linear(d_model, d_model*gate) and fails on the d_model*channels = {} SSM features",
                        h * c
                    ));
                }
                GateStyle::S4d if c == g => {
                    return Err(format!(
                        "gate = {g} equal to channels = {c} is not supported: lrnnx's S4D then creates \
                         no output_gate and its forward fails"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Width of the SSM output after flattening the channels.
    pub fn ssm_width(&self) -> usize {
        self.d_model * self.channels
    }
}

/// The block around an S4/S4D kernel. Keys as in lrnnx: `input_linear.*`,
/// `input_gate.0.*`, `D (channels, H)`, `output_gate.*`, `output_linear.0.*`.
#[derive(Debug, Clone)]
pub struct SsmWrapper {
    opts: SsmWrapperOpts,
    input_gate: Option<Linear>,
    input_linear: Option<Linear>,
    d: Tensor,
    output_gate: Option<Linear>,
    output_linear: Option<Linear>,
}

impl SsmWrapper {
    /// The bottleneck `input_linear` (first in lrnnx's draw order, before
    /// the SSM parameters), or `None` without a bottleneck.
    pub fn build_bottleneck(opts: &SsmWrapperOpts, pb: &ParamBuilder) -> Result<Option<Linear>> {
        opts.validate().map_err(Error::Config)?;
        match opts.bottleneck {
            Some(_) => Ok(Some(linear(
                opts.d_model,
                opts.d_model,
                &pb.pp("input_linear"),
            )?)),
            None => Ok(None),
        }
    }

    /// The rest of the wrapper, drawn after the SSM parameters:
    /// `input_gate`, `D`, `output_gate`, `output_linear` (lrnnx's order).
    pub fn new(
        opts: SsmWrapperOpts,
        input_linear: Option<Linear>,
        pb: &ParamBuilder,
    ) -> Result<Self> {
        opts.validate().map_err(Error::Config)?;
        let (h, c) = (opts.d_model, opts.channels);
        let input_gate = match opts.gate {
            Some(g) => Some(linear(h, h * g, &pb.pp("input_gate").pp(0))?),
            None => None,
        };
        let d = pb.get_with((c, h), "D", |rng| {
            let v: Vec<f32> = random::normal(rng, c * h)
                .into_iter()
                .map(|z| z as f32)
                .collect();
            Ok(Tensor::from_vec(v, (c, h), &Device::Cpu)?)
        })?;
        let output_gate = match opts.gate {
            Some(g) if h * c != h * g => {
                let d_in = match opts.gate_style {
                    GateStyle::S4 => h,
                    GateStyle::S4d => h * c,
                };
                Some(linear(d_in, h * g, &pb.pp("output_gate"))?)
            }
            _ => None,
        };
        let output_linear = if opts.output_linear {
            let d_in = opts.gate.map(|g| h * g).unwrap_or(h * c);
            Some(linear(d_in, h, &pb.pp("output_linear").pp(0))?)
        } else {
            None
        };
        Ok(Self {
            opts,
            input_gate,
            input_linear,
            d,
            output_gate,
            output_linear,
        })
    }

    /// The options it was built with.
    pub fn opts(&self) -> &SsmWrapperOpts {
        &self.opts
    }

    /// The skip parameter `D (channels, H)`.
    pub fn d(&self) -> &Tensor {
        &self.d
    }

    /// Width of the output: `d_model` with an output linear, else the SSM
    /// width (or the gate width with a gate).
    pub fn output_width(&self) -> usize {
        let h = self.opts.d_model;
        match (self.output_linear.is_some(), self.opts.gate) {
            (true, _) => h,
            (false, Some(g)) => h * g,
            (false, None) => h * self.opts.channels,
        }
    }

    /// Before the SSM: `(x for the SSM, gate branch v)` from `x (..., H)`:
    /// `v = gelu(input_gate(x))`, `x = input_linear(x)`.
    pub fn input(&self, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let v = match &self.input_gate {
            Some(l) => Some(project_linear(x, l)?.gelu_erf()?),
            None => None,
        };
        let x = match &self.input_linear {
            Some(l) => project_linear(x, l)?,
            None => x.clone(),
        };
        Ok((x, v))
    }

    /// After the SSM: `y (..., channels, H)` is the SSM output, `x (..., H)`
    /// its input, `v` the gate branch. Adds `D x`, flattens the channels,
    /// then GELU, `[output_gate(.) * v]`, GELU, output linear + GELU.
    pub fn output(&self, y: &Tensor, x: &Tensor, v: Option<&Tensor>) -> Result<Tensor> {
        let (c, h) = (self.opts.channels, self.opts.d_model);
        let d = self.d.to_dtype(y.dtype())?;
        let y = y.broadcast_add(
            &x.to_dtype(y.dtype())?
                .unsqueeze(D::Minus2)?
                .broadcast_mul(&d)?,
        )?;
        let mut dims = y.dims().to_vec();
        dims.truncate(dims.len() - 2);
        dims.push(c * h);
        let y = if self.opts.swap_channels && c > 1 {
            y.transpose(D::Minus1, D::Minus2)?.contiguous()?
        } else {
            y
        };
        let mut y = y.reshape(dims)?.gelu_erf()?;
        if let Some(v) = v {
            if let Some(g) = &self.output_gate {
                y = project_linear(&y, g)?;
            }
            y = (y * v)?;
        }
        let y = y.gelu_erf()?;
        match &self.output_linear {
            Some(l) => Ok(project_linear(&y, l)?.gelu_erf()?),
            None => Ok(y),
        }
    }
}

/// lrnnx's `lengths` handling: zeroes the inputs at positions `t >= lengths[b]`
/// (outputs there are still computed). `lengths` is `(B,)` or `(1,)`, any
/// numeric dtype; `x` is `(B, L, H)`.
pub fn mask_lengths(x: &Tensor, lengths: Option<&Tensor>) -> Result<Tensor> {
    let Some(lengths) = lengths else {
        return Ok(x.clone());
    };
    let (b, l, _) = x.dims3()?;
    let n = match lengths.dims() {
        &[n] if n == 1 || n == b => n,
        d => return Err(Error::shape("lengths", format!("({b},) or (1,)"), d)),
    };
    let lens = lengths
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f64>()?;
    let mut mask = vec![0f32; n * l];
    for (i, len) in lens.iter().enumerate() {
        for t in 0..l {
            if (t as f64) < *len {
                mask[i * l + t] = 1.0;
            }
        }
    }
    let mask = Tensor::from_vec(mask, (n, l, 1), x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&mask)?)
}
