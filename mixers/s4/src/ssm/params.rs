//! The SSM parameters of lrnnx's S4/S4D (`inv_dt`, `A_real`, `A_imag`, `B`,
//! `C`, `P`): shapes, positivity transforms, `layer.kernel.*` aliases, and
//! their draw in lrnnx's order.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::{Device, Tensor, D};
use num_complex::Complex64;
use rand::rngs::StdRng;

use super::hippo;
use lrnnx_framework::params::random;
use lrnnx_framework::{Error, ParamBuilder, Result};

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

fn complex_tensor(v: &[Complex64], shape: &[usize]) -> Result<Tensor> {
    let flat: Vec<f32> = v.iter().flat_map(|z| [z.re as f32, z.im as f32]).collect();
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
            let vals: Vec<Complex64> = if spec.deterministic {
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
                    .map(|p| Complex64::new(p[0] * 0.5f64.sqrt(), -p[1] * 0.5f64.sqrt()))
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
                .map(|z| spec.real_transform.inverse(-z.re) as f32)
                .collect();
            Ok(Tensor::from_vec(v, (s, n2), &Device::Cpu)?)
        })?;
        let a_imag = pb.get_with((s, n2), "A_imag", |rng| {
            let v: Vec<f32> = get_init(rng)?
                .lambda
                .iter()
                .map(|z| spec.imag_transform.inverse(-z.im) as f32)
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
