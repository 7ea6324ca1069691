//! Token generation: parallel prefill of the prompt, then recurrent decoding with sampling.

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{LRNNLMHeadModel, LmForwardOpts};
use crate::{Error, Result};

/// Sampling settings. The default is greedy decoding of 32 tokens.
#[derive(Debug, Clone)]
pub struct GenerateOpts {
    /// Tokens to generate after the prompt.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1.0: off).
    pub top_p: f64,
    /// Divide positive logits (multiply negative ones) of tokens already seen by this (1.0: off).
    pub repetition_penalty: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Only sample ids below this (the unpadded vocabulary); `None`: all.
    pub vocab_limit: Option<usize>,
}

impl Default for GenerateOpts {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            vocab_limit: None,
        }
    }
}

/// Picks the next token from a row of logits.
#[derive(Debug)]
pub struct Sampler {
    opts: GenerateOpts,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded from `opts.seed`.
    pub fn new(opts: GenerateOpts) -> Result<Self> {
        if !(opts.temperature >= 0.0 && opts.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "temperature must be >= 0, found {}",
                opts.temperature
            )));
        }
        if !(opts.top_p > 0.0 && opts.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "top_p must be in (0, 1], found {}",
                opts.top_p
            )));
        }
        if !(opts.repetition_penalty > 0.0 && opts.repetition_penalty.is_finite()) {
            return Err(Error::Config(format!(
                "repetition_penalty must be > 0, found {}",
                opts.repetition_penalty
            )));
        }
        let rng = StdRng::seed_from_u64(opts.seed);
        Ok(Self { opts, rng })
    }

    /// The next token given `logits` (one row) and the tokens so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let n = self
            .opts
            .vocab_limit
            .unwrap_or(logits.len())
            .min(logits.len());
        let mut l: Vec<f64> = logits[..n].iter().map(|&x| x as f64).collect();
        if self.opts.repetition_penalty != 1.0 {
            let p = self.opts.repetition_penalty;
            for &t in history {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 { *x / p } else { *x * p };
                }
            }
        }
        let argmax = |v: &[f64]| {
            v.iter()
                .enumerate()
                .fold((0usize, f64::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                })
                .0 as u32
        };
        if self.opts.temperature == 0.0 {
            return argmax(&l);
        }
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        if self.opts.top_k > 0 {
            idx.truncate(self.opts.top_k);
        }
        let max = l[idx[0]];
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((l[i] - max) / self.opts.temperature).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.opts.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (j, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.opts.top_p {
                    keep = j + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (j, p) in probs.iter().enumerate() {
            if u < *p {
                return idx[j] as u32;
            }
            u -= p;
        }
        idx[probs.len() - 1] as u32
    }
}

/// Generates up to `opts.max_new_tokens` tokens after `prompt` (one sequence),
/// calling `on_token` with each new token as it comes. The prompt is run
/// through the parallel forward once; then one recurrent step per token.
pub fn generate(
    model: &LRNNLMHeadModel,
    prompt: &[u32],
    opts: &GenerateOpts,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::shape("prompt", "at least one token", 0));
    }
    let mut sampler = Sampler::new(opts.clone())?;
    let dev = model.device();
    let mut state = model.init_state(1, prompt.len().saturating_add(opts.max_new_tokens))?;
    let ids = Tensor::new(prompt, dev)?.unsqueeze(0)?;
    let mut logits = model.prefill(&ids, &mut state, &LmForwardOpts::default())?;
    let mut history = prompt.to_vec();
    // Reserve for what is plausible, not for whatever was asked.
    let mut out = Vec::with_capacity(opts.max_new_tokens.min(1 << 16));
    for i in 0..opts.max_new_tokens {
        let row = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
            return Err(Error::Config(format!(
                "the model produced a non-finite logit ({bad}) at generated token {i}; \
                 its weights or inputs are corrupt"
            )));
        }
        let next = sampler.sample(&row, &history);
        on_token(next);
        out.push(next);
        history.push(next);
        if i + 1 < opts.max_new_tokens {
            logits = model.step(&Tensor::new(&[next], dev)?, &mut state, None)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_penalty() {
        let logits = [0.1f32, 2.0, 1.9, -1.0];
        let mut s = Sampler::new(GenerateOpts::default()).unwrap();
        assert_eq!(s.sample(&logits, &[]), 1);
        let mut s = Sampler::new(GenerateOpts {
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&logits, &[1]), 2);
        let mut s = Sampler::new(GenerateOpts {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&logits, &[]), 1);
        }
        let mut s = Sampler::new(GenerateOpts {
            temperature: 1.0,
            top_p: 0.4,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(
                s.sample(&logits, &[]),
                1,
                "top_p 0.4 keeps only the best token (p = 0.475) here"
            );
        }
    }

    #[test]
    fn sampling_is_seeded() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(GenerateOpts {
                temperature: 1.0,
                seed,
                ..Default::default()
            })
            .unwrap();
            (0..30).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
