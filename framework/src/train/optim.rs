//! AdamW with decoupled weight decay, whose state can be saved and restored.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::{Error, Result};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    /// Learning rate (set per step by the schedule).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not to norms, biases or SSM vectors).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// AdamW over named variables.
#[derive(Debug)]
pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Steps taken.
    pub step: usize,
    /// Hyper-parameters.
    pub config: AdamWConfig,
}

impl AdamW {
    /// An optimizer over `vars` with zeroed moments.
    pub fn new(vars: BTreeMap<String, Var>, config: AdamWConfig) -> Result<Self> {
        let vars: Vec<(String, Var)> = vars.into_iter().collect();
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            step: 0,
            config,
        })
    }

    /// One update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let mut theta = var.as_tensor().clone();
            if c.weight_decay > 0.0 && theta.rank() >= 2 {
                theta = (theta * (1.0 - c.lr * c.weight_decay))?;
            }
            var.set(&(theta - (update * c.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments and step count, for a checkpoint.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut s = BTreeMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            s.insert(format!("m.{name}"), self.m[i].clone());
            s.insert(format!("v.{name}"), self.v[i].clone());
        }
        s
    }

    /// Restores moments saved by [`AdamW::state`]; every variable must be present with its shape.
    pub fn load_state(
        &mut self,
        state: &std::collections::HashMap<String, Tensor>,
        step: usize,
    ) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (slot, prefix) in [(&mut self.m[i], "m"), (&mut self.v[i], "v")] {
                let key = format!("{prefix}.{name}");
                let t = state.get(&key).ok_or_else(|| Error::MissingTensor {
                    key: key.clone(),
                    hint: Some("in the optimizer state".into()),
                })?;
                if t.dims() != var.as_tensor().dims() {
                    return Err(Error::TensorShape {
                        key,
                        expected: var.as_tensor().dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                *slot = t.to_device(var.as_tensor().device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Scales every gradient so that their global L2 norm is at most `max_norm`;
/// returns the norm before clipping.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &BTreeMap<String, Var>,
    max_norm: f64,
) -> Result<f64> {
    let mut total = 0.0;
    for var in vars.values() {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    let norm = total.sqrt();
    if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
        let scale = max_norm / (norm + 1e-6);
        for var in vars.values() {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn minimises_a_quadratic_and_clips() {
        let w = Var::from_tensor(&Tensor::new(&[[3f32, -2.0]], &Device::Cpu).unwrap()).unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("w".to_string(), w.clone());
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vars.clone(), cfg).unwrap();
        for _ in 0..300 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            let mut g = loss.backward().unwrap();
            let norm = clip_grad_norm(&mut g, &vars, 1.0).unwrap();
            assert!(norm.is_finite());
            let after: f64 = g
                .get(w.as_tensor())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            assert!(after.sqrt() <= 1.0 + 1e-5);
            opt.step(&g).unwrap();
        }
        let v = w
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(v.iter().all(|x| x.abs() < 0.05), "{v:?}");
    }
}
