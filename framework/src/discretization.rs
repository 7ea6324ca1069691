//! Discretization of diagonal continuous-time systems `x' = A x + B u`.
//!
//! One implementation for every mixer. Each rule maps a (complex, diagonal)
//! `A` and a real step `dt` to `A_bar` and an input gain `gamma`, so that the
//! discrete system is `x_k = A_bar x_{k-1} + gamma * (B u_k)`.
//!
//! | rule | `A_bar` | `gamma` |
//! |---|---|---|
//! | `zoh` | `exp(dt A)` | `(exp(dt A) - 1) / A` |
//! | `bilinear` | `(1 + dt A / 2) / (1 - dt A / 2)` | `dt / (1 - dt A / 2)` |
//! | `dirac` | `exp(dt A)` | `1` |
//! | `async` | `exp(dt tau A)` | `(exp(dt tau A) - 1) / A` (tau: integration timestep) |
//! | `none` | `A` | `1` |
//! | `mamba` | `exp(dt A)` | `dt` |
//!
//! `bilinear` is the textbook Tustin transform, as in lrnnx's scans (Mamba,
//! S5 LTV). lrnnx's `core.bilinear`, used only by its LTI S5, flips the sign
//! of `A` in both factors; [`Discretization::BilinearFlipped`] reproduces it
//! for checkpoint compatibility.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::{Complex, Error, Result};

/// A discretization rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discretization {
    /// Zero-order hold.
    Zoh,
    /// Bilinear (Tustin).
    Bilinear,
    /// lrnnx's LTI bilinear: `A_bar = (1 - dt A/2)/(1 + dt A/2)`, `gamma = dt/(1 + dt A/2)`.
    BilinearFlipped,
    /// Dirac impulse input: `A_bar = exp(dt A)`, no input scaling.
    Dirac,
    /// Event-driven zero-order hold with a per-event timestep.
    Async,
    /// No discretization: the parameters already are discrete.
    #[serde(alias = "no_discretization")]
    None,
    /// Mamba's rule: exponential for `A`, Euler for `B`.
    Mamba,
}

impl std::str::FromStr for Discretization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            Error::Config(format!(
                "unknown discretization `{s}`; expected one of zoh, bilinear, bilinear_flipped, dirac, async, none, mamba"
            ))
        })
    }
}

/// The discrete system: `A_bar` and the input gain `gamma`.
#[derive(Debug, Clone)]
pub struct Discrete {
    /// State transition.
    pub a_bar: Complex,
    /// Input gain multiplying `B u`.
    pub gamma: Complex,
}

impl Discretization {
    /// Discretizes `a` (any shape) with step `dt` (broadcastable to `a`).
    /// `integration_timesteps` (broadcastable) is required by `Async` and ignored by the others.
    pub fn apply(
        &self,
        a: &Complex,
        dt: &Tensor,
        integration_timesteps: Option<&Tensor>,
    ) -> Result<Discrete> {
        let dta = a.mul_real(dt)?;
        let ones = Complex::from_real(dta.re.ones_like()?)?;
        let expm1_over_a =
            |dta: &Complex| -> Result<Complex> { dta.exp()?.add_scalar(-1.0)?.div(a) };
        let (a_bar, gamma) = match self {
            Discretization::Zoh => (dta.exp()?, expm1_over_a(&dta)?),
            Discretization::Bilinear | Discretization::BilinearFlipped => {
                let half = dta.scale(0.5)?;
                let plus = half.add_scalar(1.0)?;
                let minus = half.scale(-1.0)?.add_scalar(1.0)?;
                let (num, den) = if *self == Discretization::Bilinear {
                    (plus, minus)
                } else {
                    (minus, plus)
                };
                let dt_c = Complex::from_real(dt.broadcast_as(dta.dims())?.contiguous()?)?;
                (num.div(&den)?, dt_c.div(&den)?)
            }
            Discretization::Dirac => (dta.exp()?, ones),
            Discretization::Async => {
                let tau = integration_timesteps.ok_or_else(|| {
                    Error::Config("the `async` discretization needs integration_timesteps".into())
                })?;
                let scaled = dta.mul_real(tau)?;
                (scaled.exp()?, expm1_over_a(&scaled)?)
            }
            Discretization::None => (a.clone(), ones),
            Discretization::Mamba => {
                let dt_c = Complex::from_real(dt.broadcast_as(dta.dims())?.contiguous()?)?;
                (dta.exp()?, dt_c)
            }
        };
        Ok(Discrete { a_bar, gamma })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Plain f64 complex numbers for the closed forms.
    #[derive(Clone, Copy, Debug)]
    struct C(f64, f64);
    impl C {
        fn div(self, o: C) -> C {
            let d = o.0 * o.0 + o.1 * o.1;
            C(
                (self.0 * o.0 + self.1 * o.1) / d,
                (self.1 * o.0 - self.0 * o.1) / d,
            )
        }
        fn exp(self) -> C {
            let r = self.0.exp();
            C(r * self.1.cos(), r * self.1.sin())
        }
        fn add(self, o: C) -> C {
            C(self.0 + o.0, self.1 + o.1)
        }
        fn s(self, k: f64) -> C {
            C(self.0 * k, self.1 * k)
        }
    }

    fn closed_form(rule: Discretization, a: C, dt: f64, tau: f64) -> (C, C) {
        let one = C(1.0, 0.0);
        let dta = a.s(dt);
        match rule {
            Discretization::Zoh => (dta.exp(), dta.exp().add(one.s(-1.0)).div(a)),
            Discretization::Bilinear => {
                let den = one.add(dta.s(-0.5));
                (one.add(dta.s(0.5)).div(den), C(dt, 0.0).div(den))
            }
            Discretization::BilinearFlipped => {
                let den = one.add(dta.s(0.5));
                (one.add(dta.s(-0.5)).div(den), C(dt, 0.0).div(den))
            }
            Discretization::Dirac => (dta.exp(), one),
            Discretization::Async => {
                let e = dta.s(tau).exp();
                (e, e.add(one.s(-1.0)).div(a))
            }
            Discretization::None => (a, one),
            Discretization::Mamba => (dta.exp(), C(dt, 0.0)),
        }
    }

    use lrnnx_testing::uniform_vec as pseudo_random;

    fn check(rule: Discretization, complex: bool) {
        let n = 37;
        let dev = Device::Cpu;
        let re = pseudo_random(n, 1, -3.0, -0.05);
        let im = if complex {
            pseudo_random(n, 2, -4.0, 4.0)
        } else {
            vec![0.0; n]
        };
        let dt = pseudo_random(n, 3, 0.001, 0.5);
        let tau = pseudo_random(n, 4, 0.1, 3.0);
        let t = |v: &Vec<f64>| Tensor::new(v.as_slice(), &dev).unwrap();
        let a = Complex::new(t(&re), t(&im));
        let out = rule.apply(&a, &t(&dt), Some(&t(&tau))).unwrap();
        let get = |x: &Tensor| x.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        let (abr, abi, gr, gi) = (
            get(&out.a_bar.re),
            get(&out.a_bar.im),
            get(&out.gamma.re),
            get(&out.gamma.im),
        );
        for i in 0..n {
            let (ab, g) = closed_form(rule, C(re[i], im[i]), dt[i], tau[i]);
            for (got, want) in [(abr[i], ab.0), (abi[i], ab.1), (gr[i], g.0), (gi[i], g.1)] {
                assert!(
                    (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                    "{rule:?} i={i}: {got} vs {want}"
                );
            }
            if !complex {
                assert!(abi[i].abs() < 1e-15 && gi[i].abs() < 1e-15);
            }
        }
    }

    #[test]
    fn every_rule_matches_its_closed_form_on_complex_and_real_inputs() {
        use Discretization::*;
        for rule in [Zoh, Bilinear, BilinearFlipped, Dirac, Async, None, Mamba] {
            check(rule, true);
            check(rule, false);
        }
    }

    #[test]
    fn names_parse_as_lrnnx_spells_them() {
        assert_eq!(
            "zoh".parse::<Discretization>().unwrap(),
            Discretization::Zoh
        );
        assert_eq!(
            "no_discretization".parse::<Discretization>().unwrap(),
            Discretization::None
        );
        let err = "euler".parse::<Discretization>().unwrap_err().to_string();
        assert!(err.contains("euler") && err.contains("zoh"), "{err}");
    }

    #[test]
    fn async_without_timesteps_is_an_error() {
        let dev = Device::Cpu;
        let a = Complex::from_real(Tensor::new(&[-1f64], &dev).unwrap()).unwrap();
        let dt = Tensor::new(&[0.1f64], &dev).unwrap();
        assert!(Discretization::Async.apply(&a, &dt, Option::None).is_err());
    }
}
