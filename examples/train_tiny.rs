//! Train a tiny language model with the library's `Trainer` on a few verses
//! of text (byte tokens) and watch its loss fall.
//!
//!     cargo run --release --example train_tiny

use candle_core::Device;
use lrnnx::train::{ByteTokenizer, OnStep, TokenBatches, Tokenizer, TrainConfig, Trainer};
use lrnnx::{LRNNLMHeadModel, LmConfig};

const TEXT: &str = "In the beginning God created the heaven and the earth. And the earth was \
without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved \
upon the face of the waters. And God said, Let there be light: and there was light. And God saw \
the light, that it was good: and God divided the light from the darkness. And God called the \
light Day, and the darkness he called Night. And the evening and the morning were the first day. \
And God said, Let there be a firmament in the midst of the waters, and let it divide the waters \
from the waters. And God made the firmament, and divided the waters which were under the \
firmament from the waters which were above the firmament: and it was so. And God called the \
firmament Heaven. And the evening and the morning were the second day.";

fn main() -> anyhow::Result<()> {
    let (first, last) = train(60)?;
    println!("training loss {first:.3} -> {last:.3}");
    Ok(())
}

/// Trains a two-layer LRU model for `steps` steps, printing the loss every
/// ten; returns the first and the last step's training loss.
pub fn train(steps: usize) -> anyhow::Result<(f64, f64)> {
    lrnnx::init();
    let cfg = TrainConfig {
        steps,
        batch_size: 8,
        seq_len: 32,
        lr: 1e-2,
        warmup: 5,
        eval_every: 20,
        val_fraction: 0.1,
        ..TrainConfig::default()
    };
    let data = TokenBatches::new(
        ByteTokenizer.encode(TEXT)?,
        cfg.seq_len,
        cfg.val_fraction,
        cfg.seed,
    )?;
    let model =
        LRNNLMHeadModel::init(LmConfig::new(32, 16, 256, &["LRU", "LRU"]), 0, &Device::Cpu)?;
    let mut losses = Vec::new();
    let mut log = OnStep(|r: &lrnnx::train::StepReport| {
        if r.step.is_multiple_of(10) {
            println!(
                "step {:3}  loss {:.3}  {:.0} tok/s",
                r.step, r.loss, r.tokens_per_s
            );
        }
        losses.push(r.loss);
    });
    let summary = Trainer::new(model, data, cfg)?.fit(&mut [&mut log])?;
    println!("validation loss {:.3} nats/token", summary.val_loss);
    Ok((losses[0], summary.last_loss.unwrap_or(f64::NAN)))
}
