//! Tokens and batches for language-model training.

use candle_core::{Device, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// Text to token ids and back.
pub trait Tokenizer: Send + Sync {
    /// Token ids of `text`.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Text of `ids` (lossy where ids do not form valid text).
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Number of distinct ids.
    fn vocab_size(&self) -> usize;
}

/// One token per byte: vocabulary 256, no files needed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteTokenizer;

impl Tokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes: Vec<u8> = ids.iter().map(|&i| i.min(255) as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    fn vocab_size(&self) -> usize {
        256
    }
}

/// A token stream split into training and validation parts, sampled in
/// random windows. Batch `k` is drawn from a generator seeded with
/// `(seed, k)`, so a resumed run continues at step `k` in O(1).
#[derive(Debug)]
pub struct TokenBatches {
    train: Vec<u32>,
    val: Vec<u32>,
    seq_len: usize,
    seed: u64,
    /// Index of the next training batch.
    next: u64,
}

impl TokenBatches {
    /// Splits `ids`: the last `val_fraction` is the validation part.
    pub fn new(ids: Vec<u32>, seq_len: usize, val_fraction: f64, seed: u64) -> Result<Self> {
        let n_val = ((ids.len() as f64) * val_fraction.clamp(0.0, 0.5)) as usize;
        let split = ids.len() - n_val;
        let (train, val) = (ids[..split].to_vec(), ids[split..].to_vec());
        for (what, part) in [("training", &train), ("validation", &val)] {
            if part.len() <= seq_len + 1 {
                return Err(Error::Config(format!(
                    "the corpus's {what} part has {} tokens, fewer than seq_len + 2 = {}; use a longer corpus or a shorter --seq-len",
                    part.len(),
                    seq_len + 2
                )));
            }
        }
        Ok(Self {
            train,
            val,
            seq_len,
            seed,
            next: 0,
        })
    }

    fn window(tokens: &[u32], start: usize, len: usize) -> (&[u32], &[u32]) {
        (
            &tokens[start..start + len],
            &tokens[start + 1..start + len + 1],
        )
    }

    fn to_tensors(
        inputs: Vec<u32>,
        targets: Vec<u32>,
        b: usize,
        l: usize,
        dev: &Device,
    ) -> Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_vec(inputs, (b, l), dev)?,
            Tensor::from_vec(targets, (b, l), dev)?,
        ))
    }

    /// Makes `k` the index of the next training batch (a resumed run: `k`
    /// optimizer steps done).
    pub fn skip_to(&mut self, k: u64) {
        self.next = k;
    }

    /// The next random training batch: inputs and next-token targets, `(B, seq_len)` each.
    pub fn train_batch(&mut self, batch: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        let k = self.next;
        self.next += 1;
        // SplitMix-style spreading of (seed, k) over the generator's seed.
        let mut rng = StdRng::seed_from_u64(self.seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..batch {
            let start = rng.random_range(0..self.train.len() - self.seq_len - 1);
            let (a, b) = Self::window(&self.train, start, self.seq_len);
            x.extend_from_slice(a);
            y.extend_from_slice(b);
        }
        Self::to_tensors(x, y, batch, self.seq_len, dev)
    }

    /// Validation batches covering the validation part in order (at most `max_batches`).
    pub fn val_batches(
        &self,
        batch: usize,
        max_batches: usize,
        dev: &Device,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let l = self.seq_len;
        let windows = (self.val.len() - 1) / l;
        let mut out = Vec::new();
        let mut w = 0;
        while w + batch <= windows && out.len() < max_batches {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for k in 0..batch {
                let (a, b) = Self::window(&self.val, (w + k) * l, l);
                x.extend_from_slice(a);
                y.extend_from_slice(b);
            }
            out.push(Self::to_tensors(x, y, batch, l, dev)?);
            w += batch;
        }
        if out.is_empty() {
            let (a, b) = Self::window(&self.val, 0, l);
            out.push(Self::to_tensors(a.to_vec(), b.to_vec(), 1, l, dev)?);
        }
        Ok(out)
    }

    /// Entropy (nats per token) of the training part's unigram distribution:
    /// the loss of a model that ignores context.
    pub fn unigram_entropy(&self) -> f64 {
        let mut counts = std::collections::HashMap::new();
        for &t in &self.train {
            *counts.entry(t).or_insert(0usize) += 1;
        }
        let n = self.train.len() as f64;
        counts
            .values()
            .map(|&c| -(c as f64 / n) * (c as f64 / n).ln())
            .sum()
    }
}

/// Mean cross-entropy (nats) of `logits (B, L, V)` against `targets (B, L)`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let flat = logits.reshape(((), v))?;
    Ok(candle_nn::loss::cross_entropy(
        &flat,
        &targets.flatten_all()?,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_shifted_windows_and_seeded() {
        let ids: Vec<u32> = (0..1000).map(|i| (i % 97) as u32).collect();
        let mut a = TokenBatches::new(ids.clone(), 16, 0.1, 3).unwrap();
        let mut b = TokenBatches::new(ids, 16, 0.1, 3).unwrap();
        let (x, y) = a.train_batch(4, &Device::Cpu).unwrap();
        let (x2, _) = b.train_batch(4, &Device::Cpu).unwrap();
        assert_eq!(x.to_vec2::<u32>().unwrap(), x2.to_vec2::<u32>().unwrap());
        let (x, y) = (x.to_vec2::<u32>().unwrap(), y.to_vec2::<u32>().unwrap());
        for (xr, yr) in x.iter().zip(&y) {
            for t in 0..15 {
                assert_eq!(xr[t + 1], yr[t]);
            }
        }
        // Batch k does not depend on the batches drawn before it.
        let (x3, _) = a.train_batch(4, &Device::Cpu).unwrap();
        b.skip_to(1);
        let (x4, _) = b.train_batch(4, &Device::Cpu).unwrap();
        assert_eq!(x3.to_vec2::<u32>().unwrap(), x4.to_vec2::<u32>().unwrap());
        assert_ne!(x3.to_vec2::<u32>().unwrap(), x);
        let h = a.unigram_entropy();
        assert!((h - (97f64).ln()).abs() < 0.01, "{h}");
        assert!(TokenBatches::new(vec![1; 20], 16, 0.1, 0).is_err());
    }
}
