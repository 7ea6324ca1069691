//! What lrnnx's `S4` and `S4D` classes share: the block around the SSM kernel
//! ([`SsmWrapper`]: input gate, bottleneck linear, `D` skip, the two GELUs,
//! output gate, output linear, `lengths` masking) and the SSM parameters
//! ([`SsmParams`]: `inv_dt`, `A_real`, `A_imag`, `B`, `C`, `P` with their
//! transforms, their `layer.kernel.*` aliases and the HiPPO initialisations of
//! `lrnnx/ops/s4_utils.py`).
//!
//! The forward of both classes is
//! `gelu(output_linear(gelu([output_gate] gelu(ssm(x) + D x))))`: lrnnx's
//! `final_act="glu"` is a `Linear` followed by a GELU (not a GLU), and there
//! are two GELUs before it (`conv_activation`, then `mult_activation`). Every
//! GELU is the exact erf form of `nn.GELU()`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Device, Module, Tensor, D};
use rand::rngs::StdRng;

use super::linear::{linear, Linear};
use crate::params::random;
use crate::{Error, ParamBuilder, Result};

// ---------------------------------------------------------------------------
// The wrapper layers
// ---------------------------------------------------------------------------

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
            Some(l) => Some(l.forward(x)?.gelu_erf()?),
            None => None,
        };
        let x = match &self.input_linear {
            Some(l) => l.forward(x)?,
            None => x.clone(),
        };
        Ok((x, v))
    }

    /// After the SSM: `y (..., channels, H)` is the SSM output, `x (..., H)`
    /// its input, `v` the gate branch. Adds `D x`, flattens the channels,
    /// then GELU, `[output_gate(.) * v]`, GELU, output linear + GELU.
    pub fn output(&self, y: &Tensor, x: &Tensor, v: Option<&Tensor>) -> Result<Tensor> {
        let (c, h) = (self.opts.channels, self.opts.d_model);
        let y = y.broadcast_add(&x.unsqueeze(D::Minus2)?.broadcast_mul(&self.d)?)?;
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
                y = g.forward(&y)?;
            }
            y = (y * v)?;
        }
        let y = y.gelu_erf()?;
        match &self.output_linear {
            Some(l) => Ok(l.forward(&y)?.gelu_erf()?),
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

// ---------------------------------------------------------------------------
// Parameter transforms (`param_transform` / `inv_transform`)
// ---------------------------------------------------------------------------

/// A positivity transform of lrnnx's SSM parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Identity.
    None,
    /// `exp`.
    Exp,
    /// `relu(x) + 1e-4`.
    Relu,
    /// `sigmoid`.
    Sigmoid,
    /// `softplus`.
    Softplus,
}

impl Transform {
    /// Parses lrnnx's name (`none`, `exp`, `relu`, `sigmoid`, `softplus`);
    /// `what` names the kwarg in the error.
    pub fn parse(s: &str, what: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "exp" => Ok(Self::Exp),
            "relu" => Ok(Self::Relu),
            "sigmoid" => Ok(Self::Sigmoid),
            "softplus" => Ok(Self::Softplus),
            _ => Err(format!(
                "{what} must be one of none, exp, relu, sigmoid, softplus; found `{s}`"
            )),
        }
    }

    /// The transform on a tensor (differentiable).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::None => x.clone(),
            Self::Exp => x.exp()?,
            Self::Relu => (x.relu()? + 1e-4)?,
            Self::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip()?,
            // softplus(x) = relu(x) + log(1 + exp(-|x|)), stable for large |x|.
            Self::Softplus => (x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?,
        })
    }

    /// `inv_transform`: the stored value whose transform is `max(v, 1e-4)`.
    pub fn inverse(&self, v: f64) -> f64 {
        let v = v.max(1e-4);
        match self {
            Self::None | Self::Relu => v,
            Self::Exp => v.ln(),
            Self::Sigmoid => (v / (1.0 - v)).ln(),
            Self::Softplus => v.exp_m1().ln(),
        }
    }
}

// ---------------------------------------------------------------------------
// SSM parameters
// ---------------------------------------------------------------------------

/// What [`SsmParams::new`] needs: lrnnx's kernel kwargs, already parsed.
#[derive(Debug, Clone)]
pub struct SsmSpec {
    /// Model width `H`.
    pub d_model: usize,
    /// `d_state` = N; the module keeps N/2 complex modes.
    pub d_state: usize,
    /// Output channels of the SSM.
    pub channels: usize,
    /// Copies of `A`, `B`, `P` (`n_ssm`, default `H`); feature `h` uses copy `h % n_ssm`.
    pub n_ssm: usize,
    /// Rank of `P`.
    pub rank: usize,
    /// Smallest `dt` at init.
    pub dt_min: f64,
    /// Largest `dt` at init.
    pub dt_max: f64,
    /// One `dt` per feature (`(H, 1)`) rather than per mode (`(H, N/2)`).
    pub dt_tie: bool,
    /// Transform from `inv_dt` to `dt`.
    pub dt_transform: Transform,
    /// `dt = T(sinh(inv_dt))`, `inv_dt` stored as `asinh`.
    pub dt_fast: bool,
    /// lrnnx's `init` (`legs`, `fourier`, `hippo`, `diag-*`, `dplr-*`, `diag`, `all`).
    pub init: String,
    /// Deterministic `inv_dt` and `C`.
    pub deterministic: bool,
    /// Transform of `-Re(A)`.
    pub real_transform: Transform,
    /// Transform of `-Im(A)`.
    pub imag_transform: Transform,
    /// `B_clip` of the NPLR init (clamps `Im(B)`).
    pub b_clip: Option<f64>,
    /// Register `P` (S4's DPLR kernel); S4D registers none.
    pub with_p: bool,
}

impl SsmSpec {
    /// Complex modes per copy, `N/2`.
    pub fn n2(&self) -> usize {
        self.d_state / 2
    }

    /// Checks what the init and the shapes need.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.d_state < 2 {
            return Err(format!(
                "d_state must be at least 2 (N/2 complex modes are kept), found {}",
                self.d_state
            ));
        }
        if self.n_ssm == 0 || !self.d_model.is_multiple_of(self.n_ssm) {
            return Err(format!(
                "n_ssm must divide d_model = {}, found {}",
                self.d_model, self.n_ssm
            ));
        }
        if self.rank == 0 {
            return Err("rank must be at least 1, found 0".into());
        }
        if !(self.dt_min > 0.0 && self.dt_min <= self.dt_max) {
            return Err(format!(
                "dt_min and dt_max must satisfy 0 < dt_min <= dt_max, found dt_min = {}, dt_max = {}",
                self.dt_min, self.dt_max
            ));
        }
        if self.deterministic && !(self.dt_tie && self.dt_transform == Transform::Exp) {
            return Err(
                "deterministic = true needs dt_tie = true and dt_transform = \"exp\" (as lrnnx asserts)"
                    .into(),
            );
        }
        let inits = hippo::expand(&self.init)?;
        if !self.n_ssm.is_multiple_of(inits.len()) {
            return Err(format!(
                "init `{}` combines {} initialisations; n_ssm = {} must be a multiple of that",
                self.init,
                inits.len(),
                self.n_ssm
            ));
        }
        for i in &inits {
            hippo::check(i, self.rank)?;
        }
        Ok(())
    }
}

/// The stored SSM parameters, lrnnx's keys and shapes:
/// `inv_dt (H,1)|(H,N/2)`, `C (channels,H,N/2,2)`, `B (1,n_ssm,N/2,2)`,
/// `A_real (n_ssm,N/2)`, `A_imag (n_ssm,N/2)`, `P (rank,n_ssm,N/2,2)` (S4),
/// each also under `layer.kernel.<key>`.
#[derive(Debug, Clone)]
pub struct SsmParams {
    spec: SsmSpec,
    /// `inv_dt`.
    pub inv_dt: Tensor,
    /// `C` (view_as_real layout).
    pub c: Tensor,
    /// `B` (view_as_real layout).
    pub b: Tensor,
    /// `A_real`.
    pub a_real: Tensor,
    /// `A_imag`.
    pub a_imag: Tensor,
    /// `P` (view_as_real layout), S4 only.
    pub p: Option<Tensor>,
}

fn complex_tensor(v: &[(f64, f64)], shape: &[usize]) -> Result<Tensor> {
    let flat: Vec<f32> = v.iter().flat_map(|&(a, b)| [a as f32, b as f32]).collect();
    let mut s = shape.to_vec();
    s.push(2);
    Ok(Tensor::from_vec(flat, s, &Device::Cpu)?)
}

/// `"t n -> (v t) n"` along axis `dim`: `v` copies one after the other.
fn tile(t: &Tensor, dim: usize, v: usize) -> Result<Tensor> {
    if v == 1 {
        return Ok(t.clone());
    }
    Ok(Tensor::cat(&vec![t.clone(); v], dim)?)
}

impl SsmParams {
    /// Registers (or loads) the parameters in lrnnx's draw order (`inv_dt`,
    /// the init of `A, P, B`, then `C`) and their `layer.kernel.*` aliases.
    pub fn new(spec: SsmSpec, pb: &ParamBuilder) -> Result<Self> {
        spec.validate().map_err(Error::Config)?;
        let (h, n2, s, r, c) = (
            spec.d_model,
            spec.n2(),
            spec.n_ssm,
            spec.rank,
            spec.channels,
        );
        let dt_shape = if spec.dt_tie { (h, 1) } else { (h, n2) };
        let inv_dt = pb.get_with(dt_shape, "inv_dt", |rng| {
            let count = dt_shape.0 * dt_shape.1;
            let (lo, hi) = (spec.dt_min.ln(), spec.dt_max.ln());
            let raw: Vec<f64> = if spec.deterministic {
                (0..h)
                    .map(|i| {
                        let f = if h > 1 {
                            i as f64 / (h - 1) as f64
                        } else {
                            0.0
                        };
                        // lrnnx stores exp(linspace(log dt_min, log dt_max)), then exps it again at use.
                        (lo + f * (hi - lo)).exp()
                    })
                    .collect()
            } else {
                random::uniform(rng, count, 0.0, 1.0)
                    .into_iter()
                    .map(|u| {
                        let v = u * (hi - lo) + lo;
                        if spec.dt_transform == Transform::Exp {
                            v
                        } else {
                            spec.dt_transform.inverse(v.exp())
                        }
                    })
                    .collect()
            };
            let v: Vec<f32> = raw
                .into_iter()
                .map(|v| if spec.dt_fast { v.asinh() } else { v } as f32)
                .collect();
            Ok(Tensor::from_vec(v, dt_shape, &Device::Cpu)?)
        })?;
        // The init of A, P, B is drawn lazily, by whichever closure runs first.
        let init: RefCell<Option<Arc<hippo::Init>>> = RefCell::new(None);
        let get_init = |rng: &mut StdRng| -> Result<Arc<hippo::Init>> {
            if let Some(i) = init.borrow().as_ref() {
                return Ok(i.clone());
            }
            let i = Arc::new(hippo::combination(&spec, rng)?);
            *init.borrow_mut() = Some(i.clone());
            Ok(i)
        };
        let c_t = pb.get_with((c, h, n2, 2), "C", |rng| {
            let i = get_init(rng)?;
            let vals: Vec<(f64, f64)> = if spec.deterministic {
                (0..c * h)
                    .flat_map(|ch| {
                        let copy = (ch % h) % s;
                        i.v_row0[copy * n2..(copy + 1) * n2].to_vec()
                    })
                    .collect()
            } else {
                // randn(cfloat): real and imaginary parts N(0, 1/2); stored conjugated.
                let z = random::normal(rng, 2 * c * h * n2);
                z.chunks(2)
                    .map(|p| (p[0] * 0.5f64.sqrt(), -p[1] * 0.5f64.sqrt()))
                    .collect()
            };
            complex_tensor(&vals, &[c, h, n2])
        })?;
        let b = pb.get_with((1, s, n2, 2), "B", |rng| {
            complex_tensor(&get_init(rng)?.b, &[1, s, n2])
        })?;
        let a_real = pb.get_with((s, n2), "A_real", |rng| {
            let v: Vec<f32> = get_init(rng)?
                .lambda
                .iter()
                .map(|&(re, _)| spec.real_transform.inverse(-re) as f32)
                .collect();
            Ok(Tensor::from_vec(v, (s, n2), &Device::Cpu)?)
        })?;
        let a_imag = pb.get_with((s, n2), "A_imag", |rng| {
            let v: Vec<f32> = get_init(rng)?
                .lambda
                .iter()
                .map(|&(_, im)| spec.imag_transform.inverse(-im) as f32)
                .collect();
            Ok(Tensor::from_vec(v, (s, n2), &Device::Cpu)?)
        })?;
        let p = if spec.with_p {
            Some(pb.get_with((r, s, n2, 2), "P", |rng| {
                complex_tensor(&get_init(rng)?.p, &[r, s, n2])
            })?)
        } else {
            None
        };
        let mut keys = vec!["A_real", "A_imag", "B", "C", "inv_dt"];
        if spec.with_p {
            keys.push("P");
        }
        for k in keys {
            pb.alias(&format!("layer.kernel.{k}"), k)?;
        }
        Ok(Self {
            spec,
            inv_dt,
            c: c_t,
            b,
            a_real,
            a_imag,
            p,
        })
    }

    /// The spec it was built with.
    pub fn spec(&self) -> &SsmSpec {
        &self.spec
    }

    fn copies(&self) -> usize {
        self.spec.d_model / self.spec.n_ssm
    }

    /// `dt = T_dt(inv_dt)` (`T_dt(sinh(inv_dt))` with `dt_fast`): `(H, 1)` or `(H, N/2)`.
    pub fn dt(&self) -> Result<Tensor> {
        let x = if self.spec.dt_fast {
            ((self.inv_dt.exp()? - self.inv_dt.neg()?.exp()?)? * 0.5)?
        } else {
            self.inv_dt.clone()
        };
        self.spec.dt_transform.apply(&x)
    }

    /// `A = -T_real(A_real) - i T_imag(A_imag)` repeated to `(H, N/2)`: `(re, im)`.
    pub fn lambda(&self) -> Result<(Tensor, Tensor)> {
        let re = self.spec.real_transform.apply(&self.a_real)?.neg()?;
        let im = self.spec.imag_transform.apply(&self.a_imag)?.neg()?;
        let v = self.copies();
        Ok((tile(&re, 0, v)?, tile(&im, 0, v)?))
    }

    /// `B` repeated to `(H, N/2)`: `(re, im)`.
    pub fn b(&self) -> Result<(Tensor, Tensor)> {
        let b = tile(&self.b.squeeze(0)?, 0, self.copies())?;
        Ok((
            b.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?,
            b.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?,
        ))
    }

    /// `C (channels, H, N/2)`: `(re, im)`.
    pub fn c(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.c.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?,
            self.c.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?,
        ))
    }

    /// `P` repeated to `(rank, H, N/2)`: `(re, im)`; `None` for S4D.
    pub fn p(&self) -> Result<Option<(Tensor, Tensor)>> {
        let Some(p) = &self.p else {
            return Ok(None);
        };
        let p = tile(p, 1, self.copies())?;
        Ok(Some((
            p.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?,
            p.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?,
        )))
    }
}

// ---------------------------------------------------------------------------
// HiPPO initialisations (`nplr`, `dplr`, `combination` of s4_utils.py)
// ---------------------------------------------------------------------------

/// lrnnx's DPLR initialisations, computed in f64.
///
/// `nplr` diagonalises the normal part of the HiPPO matrix with a Hermitian
/// eigen-decomposition (here: cyclic complex Jacobi). Eigenvectors are only
/// defined up to a phase; LAPACK's `zheevd` (torch) returns them with a real
/// first component of arbitrary sign, and this module picks the positive
/// sign. The result is lrnnx's init up to a sign per mode of `B` and `P`
/// together, which leaves the system unchanged (`C` is random).
pub mod hippo {
    use super::*;

    /// Complex number as `(re, im)`.
    pub type C64 = (f64, f64);

    fn cmul(a: C64, b: C64) -> C64 {
        (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0)
    }
    fn conj(a: C64) -> C64 {
        (a.0, -a.1)
    }
    fn cadd(a: C64, b: C64) -> C64 {
        (a.0 + b.0, a.1 + b.1)
    }

    /// The init of one set of `n_ssm` copies: `lambda (n_ssm*N2)`,
    /// `p (rank*n_ssm*N2)`, `b (n_ssm*N2)` and row 0 of `V` (for deterministic `C`).
    #[derive(Debug, Clone, Default)]
    pub struct Init {
        /// Diagonal of `A`.
        pub lambda: Vec<C64>,
        /// Low-rank factor, `(rank, n_ssm, N2)`.
        pub p: Vec<C64>,
        /// Input matrix, `(n_ssm, N2)`.
        pub b: Vec<C64>,
        /// `V[0, :N2]` per copy, `(n_ssm, N2)`.
        pub v_row0: Vec<C64>,
    }

    /// The list of initialisations `init` stands for (`hippo`, `diag`, `all` are combinations).
    pub fn expand(init: &str) -> std::result::Result<Vec<String>, String> {
        let list: Vec<&str> = match init {
            "hippo" => vec!["legs", "fourier"],
            "diag" => vec!["diag-inv", "diag-lin"],
            "all" => vec!["legs", "fourier", "diag-inv", "diag-lin"],
            other => vec![other],
        };
        Ok(list.into_iter().map(String::from).collect())
    }

    /// Whether one initialisation is supported at this rank.
    pub fn check(init: &str, rank: usize) -> std::result::Result<(), String> {
        let ok_dplr = [
            "",
            "hippo",
            "legs",
            "rand",
            "random",
            "real",
            "lin",
            "linear",
            "inv",
            "inverse",
            "inv2",
            "inverse2",
            "quad",
            "quadratic",
        ];
        if init == "legs" || init == "fourier" || init == "fout" {
            return Ok(());
        }
        if init == "legt" {
            return Err(format!(
                "init `legt` needs rank >= 2 and is not supported (rank = {rank}); use legs, fourier, hippo, diag-* or dplr-*"
            ));
        }
        for prefix in ["diag", "dplr"] {
            if let Some(rest) = init.strip_prefix(prefix) {
                let sub = rest.strip_prefix('-').unwrap_or(rest);
                if (rest.is_empty() || rest.starts_with('-')) && ok_dplr.contains(&sub) {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "unknown init `{init}`; expected legs, fourier, hippo, diag, all, diag-<x> or dplr-<x> \
             with <x> in lin, inv, inv2, quad, rand, real, legs"
        ))
    }

    /// Eigen-decomposition of a Hermitian matrix (row-major `n x n`) by
    /// cyclic complex Jacobi rotations: eigenvalues ascending and the
    /// eigenvectors as columns of `V` (row-major).
    pub fn eigh(a: &[C64], n: usize) -> (Vec<f64>, Vec<C64>) {
        let mut a = a.to_vec();
        let mut v = vec![(0.0, 0.0); n * n];
        for i in 0..n {
            v[i * n + i] = (1.0, 0.0);
        }
        let norm: f64 = a.iter().map(|z| z.0 * z.0 + z.1 * z.1).sum::<f64>().sqrt();
        for _sweep in 0..100 {
            let off: f64 = (0..n)
                .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
                .map(|(i, j)| {
                    let z = a[i * n + j];
                    z.0 * z.0 + z.1 * z.1
                })
                .sum::<f64>()
                .sqrt();
            if off <= 1e-15 * norm.max(1e-300) {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    let apq = a[p * n + q];
                    let b = (apq.0 * apq.0 + apq.1 * apq.1).sqrt();
                    if b == 0.0 {
                        continue;
                    }
                    // U = diag(1, e^{-i phi}) R(theta) on (p, q) zeroes a_pq.
                    let ph = (apq.0 / b, apq.1 / b); // e^{i phi}
                    let (app, aqq) = (a[p * n + p].0, a[q * n + q].0);
                    let theta = 0.5 * (2.0 * b).atan2(aqq - app);
                    let (c, s) = (theta.cos(), theta.sin());
                    let em = conj(ph); // e^{-i phi}
                                       // Columns: A <- A U, V <- V U.
                    for m in [&mut a, &mut v] {
                        for k in 0..n {
                            let (xp, xq) = (m[k * n + p], m[k * n + q]);
                            let xq_e = cmul(xq, em);
                            m[k * n + p] = (c * xp.0 - s * xq_e.0, c * xp.1 - s * xq_e.1);
                            m[k * n + q] = (s * xp.0 + c * xq_e.0, s * xp.1 + c * xq_e.1);
                        }
                    }
                    // Rows: A <- U^H A.
                    for k in 0..n {
                        let (xp, xq) = (a[p * n + k], a[q * n + k]);
                        let xq_e = cmul(xq, ph);
                        a[p * n + k] = (c * xp.0 - s * xq_e.0, c * xp.1 - s * xq_e.1);
                        a[q * n + k] = (s * xp.0 + c * xq_e.0, s * xp.1 + c * xq_e.1);
                    }
                    a[p * n + q] = (0.0, 0.0);
                    a[q * n + p] = (0.0, 0.0);
                }
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| a[i * n + i].0.total_cmp(&a[j * n + j].0));
        let w: Vec<f64> = order.iter().map(|&i| a[i * n + i].0).collect();
        let mut vs = vec![(0.0, 0.0); n * n];
        for (new, &old) in order.iter().enumerate() {
            for k in 0..n {
                vs[k * n + new] = v[k * n + old];
            }
        }
        (w, vs)
    }

    /// HiPPO transition `(A (N x N) row-major, B (N))` of `measure`.
    fn transition(measure: &str, n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut a = vec![0.0; n * n];
        let mut b = vec![0.0; n];
        match measure {
            "legs" => {
                for i in 0..n {
                    b[i] = ((2 * i + 1) as f64).sqrt();
                    for j in 0..=i {
                        a[i * n + j] = if i == j {
                            -((i + 1) as f64)
                        } else {
                            -(((2 * i + 1) * (2 * j + 1)) as f64).sqrt()
                        };
                    }
                }
            }
            _ => {
                // fourier / fout
                let mut d = Vec::with_capacity(n);
                for f in 0..n / 2 {
                    d.push(0.0);
                    d.push(f as f64);
                }
                let d: Vec<f64> = d.into_iter().skip(1).collect();
                for (k, &dk) in d.iter().enumerate() {
                    if k + 1 < n {
                        a[k * n + k + 1] = -std::f64::consts::PI * dk;
                        a[(k + 1) * n + k] = std::f64::consts::PI * dk;
                    }
                }
                for i in (0..n).step_by(2) {
                    b[i] = 2f64.sqrt();
                }
                if n > 0 {
                    b[0] = 1.0;
                }
                for i in 0..n {
                    for j in 0..n {
                        a[i * n + j] -= b[i] * b[j];
                    }
                }
            }
        }
        (a, b)
    }

    /// Low-rank correction `P (rank x N)` such that `A + P^T P` is normal.
    fn rank_correction(measure: &str, n: usize, rank: usize) -> Vec<f64> {
        let mut p = vec![0.0; rank * n];
        for (i, slot) in p.iter_mut().take(n).enumerate() {
            *slot = match measure {
                "legs" => (0.5 + i as f64).sqrt(),
                _ => {
                    if i == 0 {
                        1.0
                    } else if i % 2 == 0 {
                        2f64.sqrt()
                    } else {
                        0.0
                    }
                }
            };
        }
        p
    }

    type Nplr = (Vec<C64>, Vec<C64>, Vec<C64>, Vec<C64>);

    fn nplr_cache() -> &'static Mutex<HashMap<String, Arc<Nplr>>> {
        static CACHE: OnceLock<Mutex<HashMap<String, Arc<Nplr>>>> = OnceLock::new();
        CACHE.get_or_init(|| Mutex::new(HashMap::new()))
    }

    /// lrnnx's `nplr(measure, N, rank, B_clip)`: `(W (N2), P (rank x N2), B (N2), V[0, :N2])`.
    pub fn nplr(measure: &str, n: usize, rank: usize, b_clip: Option<f64>) -> Arc<Nplr> {
        let key = format!("{measure}/{n}/{rank}/{b_clip:?}");
        if let Some(hit) = nplr_cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return hit.clone();
        }
        let (a, b) = transition(measure, n);
        let p = rank_correction(measure, n, rank);
        let mut ap = a.clone();
        for r in 0..rank {
            for i in 0..n {
                for j in 0..n {
                    ap[i * n + j] += p[r * n + i] * p[r * n + j];
                }
            }
        }
        let w_re = (0..n).map(|i| ap[i * n + i]).sum::<f64>() / n as f64;
        // eigh(AP * -1j) reads the lower triangle; the diagonal's real part is 0.
        let mut herm = vec![(0.0, 0.0); n * n];
        for i in 0..n {
            for j in 0..i {
                let z = (0.0, -ap[i * n + j]);
                herm[i * n + j] = z;
                herm[j * n + i] = conj(z);
            }
        }
        let (w_im, mut v) = eigh(&herm, n);
        let n2 = n / 2;
        // Phase: first non-negligible component real and positive (see the module docs).
        for k in 0..n {
            if let Some(z) = (0..n)
                .map(|i| v[i * n + k])
                .find(|z| z.0.hypot(z.1) > 1e-12)
            {
                let r = z.0.hypot(z.1);
                let ph = (z.0 / r, -z.1 / r);
                for i in 0..n {
                    v[i * n + k] = cmul(v[i * n + k], ph);
                }
            }
        }
        let w: Vec<C64> = (0..n2).map(|k| (w_re, w_im[k])).collect();
        let mut vk: Vec<Vec<C64>> = (0..n2)
            .map(|k| (0..n).map(|i| v[i * n + k]).collect())
            .collect();
        if n2 >= 1 && w[n2 - 1].0.hypot(w[n2 - 1].1) < 1e-4 {
            let col = &mut vk[n2 - 1];
            col.iter_mut().for_each(|z| *z = (0.0, 0.0));
            col[0] = (0.5f64.sqrt(), 0.0);
            if n > 1 {
                col[1] = (0.0, 0.5f64.sqrt());
            }
        }
        let vh_dot = |col: &[C64], x: &[f64]| -> C64 {
            col.iter().zip(x).fold((0.0, 0.0), |acc, (&z, &xv)| {
                cadd(acc, (z.0 * xv, -z.1 * xv))
            })
        };
        let mut bb: Vec<C64> = vk.iter().map(|col| vh_dot(col, &b)).collect();
        if let Some(clip) = b_clip {
            bb.iter_mut().for_each(|z| z.1 = z.1.clamp(-clip, clip));
        }
        let pp: Vec<C64> = (0..rank)
            .flat_map(|r| {
                let pr = &p[r * n..(r + 1) * n];
                vk.iter()
                    .map(move |col| vh_dot(col, pr))
                    .collect::<Vec<_>>()
            })
            .collect();
        let v0: Vec<C64> = vk.iter().map(|col| col[0]).collect();
        let out = Arc::new((w, pp, bb, v0));
        nplr_cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, out.clone());
        out
    }

    /// lrnnx's `dplr(init=sub, N, rank, H=copies)` with default arguments
    /// (`P_scale = 0` for `diag-*`).
    fn dplr(sub: &str, n: usize, rank: usize, copies: usize, diag: bool, rng: &mut StdRng) -> Init {
        let n2 = n / 2;
        let pi = std::f64::consts::PI;
        let nf = n as f64;
        let mut real = vec![0.5; copies * n2];
        let mut imag: Vec<f64> = (0..copies * n2).map(|i| (i % n2) as f64).collect();
        match sub {
            "rand" | "random" => {
                imag = random::normal(rng, copies * n2)
                    .into_iter()
                    .map(f64::exp)
                    .collect()
            }
            "real" => {
                imag.iter_mut().for_each(|x| *x = 0.0);
                real = (0..copies * n2).map(|i| 1.0 + (i % n2) as f64).collect();
            }
            "lin" | "linear" => imag.iter_mut().for_each(|x| *x *= pi),
            "inv" | "inverse" => imag
                .iter_mut()
                .for_each(|x| *x = nf / pi * (nf / (1.0 + 2.0 * *x) - 1.0)),
            "inv2" | "inverse2" => imag
                .iter_mut()
                .for_each(|x| *x = nf / pi * (nf / (1.0 + *x) - 1.0)),
            "quad" | "quadratic" => imag
                .iter_mut()
                .for_each(|x| *x = (1.0 + 2.0 * *x).powi(2) / pi),
            _ => {
                // legs / hippo
                let (w, _, _, _) = &*nplr("legs", n, 1, Some(2.0));
                imag = (0..copies * n2).map(|i| -w[i % n2].1).collect();
            }
        }
        let lambda: Vec<C64> = real.iter().zip(&imag).map(|(&r, &i)| (-r, -i)).collect();
        // B: S4D-LegS's for the legs / hippo variants, else B_init = "constant".
        let b = match sub {
            "legs" | "hippo" => {
                let (_, _, bl, _) = &*nplr("legs", n, 1, Some(2.0));
                (0..copies * n2).map(|i| bl[i % n2]).collect()
            }
            _ => vec![(1.0, 0.0); copies * n2],
        };
        let scale = if diag { 0.0 } else { 1.0 };
        let z = random::normal(rng, 2 * rank * copies * n2);
        let p = z
            .chunks(2)
            .map(|c| (c[0] * 0.5f64.sqrt() * scale, c[1] * 0.5f64.sqrt() * scale))
            .collect();
        let v_row0 = (0..copies * n2)
            .map(|i| if i % n2 == 0 { (1.0, 0.0) } else { (0.0, 0.0) })
            .collect();
        Init {
            lambda,
            p,
            b,
            v_row0,
        }
    }

    fn single(init: &str, spec: &SsmSpec, copies: usize, rng: &mut StdRng) -> Init {
        let (n, rank, n2) = (spec.d_state, spec.rank, spec.n2());
        for prefix in ["diag", "dplr"] {
            if let Some(rest) = init.strip_prefix(prefix) {
                let sub = rest.strip_prefix('-').unwrap_or("hippo");
                return dplr(sub, n, rank, copies, prefix == "diag", rng);
            }
        }
        let measure = if init == "legs" { "legs" } else { "fourier" };
        let (w, p, b, v0) = &*nplr(measure, n, rank, spec.b_clip);
        let rep = |x: &[C64]| -> Vec<C64> { (0..copies).flat_map(|_| x.iter().copied()).collect() };
        Init {
            lambda: rep(w),
            p: (0..rank)
                .flat_map(|r| rep(&p[r * n2..(r + 1) * n2]))
                .collect(),
            b: rep(b),
            v_row0: rep(v0),
        }
    }

    /// lrnnx's `combination(init, N, rank, n_ssm)`: each listed init on an
    /// equal share of the `n_ssm` copies, concatenated.
    pub fn combination(spec: &SsmSpec, rng: &mut StdRng) -> Result<Init> {
        let inits = expand(&spec.init).map_err(Error::Config)?;
        let share = spec.n_ssm / inits.len();
        let parts: Vec<Init> = inits.iter().map(|i| single(i, spec, share, rng)).collect();
        let n2 = spec.n2();
        let mut out = Init::default();
        for part in &parts {
            out.lambda.extend_from_slice(&part.lambda);
            out.b.extend_from_slice(&part.b);
            out.v_row0.extend_from_slice(&part.v_row0);
        }
        for r in 0..spec.rank {
            for part in &parts {
                out.p
                    .extend_from_slice(&part.p[r * share * n2..(r + 1) * share * n2]);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legs_init_matches_lrnnx_up_to_signs() {
        // lrnnx (torch eigh) for N = 8: A_imag, and B, P per mode up to one sign.
        let (w, p, b, _) = &*hippo::nplr("legs", 8, 1, Some(2.0));
        let a_imag = [19.85741, 5.35421, 1.95779, 0.42749];
        let p_ref = [
            (-0.09176, -3.64442),
            (0.12123, 1.29816),
            (-0.20558, -0.80498),
            (-0.42967, -0.36736),
        ];
        let b_ref = [
            (-0.12978, -2.0),
            (0.17144, 1.83588),
            (-0.29074, -1.13842),
            (-0.60765, -0.51953),
        ];
        for k in 0..4 {
            assert!((w[k].0 + 0.5).abs() < 1e-12);
            assert!((-w[k].1 - a_imag[k]).abs() < 1e-4, "{k}: {:?}", w[k]);
            let sign = if (p[k].0 - p_ref[k].0).abs() < 1e-3 {
                1.0
            } else {
                -1.0
            };
            for (ours, theirs) in [(p[k], p_ref[k]), (b[k], b_ref[k])] {
                assert!(
                    (sign * ours.0 - theirs.0).abs() < 1e-4,
                    "{k}: {ours:?} {theirs:?}"
                );
                assert!(
                    (sign * ours.1 - theirs.1).abs() < 1e-4,
                    "{k}: {ours:?} {theirs:?}"
                );
            }
        }
    }

    #[test]
    fn jacobi_diagonalises_a_random_hermitian_matrix() {
        let n = 7;
        let mut a = vec![(0.0, 0.0); n * n];
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        for i in 0..n {
            a[i * n + i] = (rnd(), 0.0);
            for j in 0..i {
                let z = (rnd(), rnd());
                a[i * n + j] = z;
                a[j * n + i] = (z.0, -z.1);
            }
        }
        let (w, v) = hippo::eigh(&a, n);
        for k in 0..n {
            for i in 0..n {
                // (A v_k)_i = w_k v_ik
                let mut acc = (0.0, 0.0);
                for j in 0..n {
                    let (x, y) = (a[i * n + j], v[j * n + k]);
                    acc.0 += x.0 * y.0 - x.1 * y.1;
                    acc.1 += x.0 * y.1 + x.1 * y.0;
                }
                assert!((acc.0 - w[k] * v[i * n + k].0).abs() < 1e-12);
                assert!((acc.1 - w[k] * v[i * n + k].1).abs() < 1e-12);
            }
        }
        assert!(w.windows(2).all(|p| p[0] <= p[1]));
    }
}
