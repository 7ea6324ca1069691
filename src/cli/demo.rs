//! `lrnnx demo`: an untrained small hybrid LRU + attention LM, one forward
//! pass and a greedy generation, with throughput. (Not the default job: that
//! is `lrnnx` with no subcommand, in [`main_job`](super::main_job).)

use std::time::Instant;

use candle_core::Tensor;
use lrnnx::{generate, GenerateOpts, LRNNLMHeadModel, LmConfig, LmForwardOpts};

/// The flags of `lrnnx demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model width.
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// Sequences in the forward pass's batch.
    #[arg(long = "batch-size", visible_alias = "batch", default_value_t = 8)]
    batch_size: usize,
    /// Tokens per sequence of the forward pass.
    #[arg(long = "seq-len", visible_alias = "seqlen", default_value_t = 1024)]
    seq_len: usize,
    /// Tokens to generate.
    #[arg(long = "max-tokens", visible_alias = "tokens", default_value_t = 64)]
    max_tokens: usize,
    #[command(flatten)]
    device: super::device::DeviceArg,
    #[command(flatten)]
    dtype: super::device::DtypeArg,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            d_model: 256,
            batch_size: 8,
            seq_len: 1024,
            max_tokens: 64,
            device: Default::default(),
            dtype: Default::default(),
        }
    }
}

/// Runs `lrnnx demo`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let dev = a.device.open()?;
    let mut cfg = LmConfig::new(a.d_model, 64, 256, &["LRU", "attn", "LRU", "attn"]);
    cfg.d_intermediate = 2 * a.d_model;
    // Rotary on half of each head's dimensions.
    let rotary = (a.d_model / 4 / 2) & !1;
    cfg.mixer_kwargs = serde_json::from_value(serde_json::json!({
        "attn": {"num_heads": 4, "causal": true, "rotary_emb_dim": rotary}
    }))?;
    let model = LRNNLMHeadModel::init_with(cfg, 0, &dev, a.dtype.for_inference()?)?;
    println!(
        "hybrid LM {:?}: d_model {}, {} parameters, {:?} on {:?}",
        model.config().mixer_types,
        a.d_model,
        model.num_params(),
        model.precision().compute,
        dev
    );
    let ids: Vec<u32> = (0..a.batch_size * a.seq_len)
        .map(|i| ((i * 31 + 7) % 256) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (a.batch_size, a.seq_len), &dev)?;
    let t = Instant::now();
    let logits = model.forward(&ids, &LmForwardOpts::default())?;
    dev.synchronize()?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "forward  B={} L={}: logits {:?} in {:.3}s = {:.0} tokens/s",
        a.batch_size,
        a.seq_len,
        logits.dims(),
        secs,
        (a.batch_size * a.seq_len) as f64 / secs
    );
    let prompt: Vec<u32> = "The quick brown fox".bytes().map(u32::from).collect();
    let opts = GenerateOpts {
        max_new_tokens: a.max_tokens,
        ..Default::default()
    };
    let t = Instant::now();
    let out = generate(&model, &prompt, &opts, |_| {})?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "generate (greedy, untrained weights): {} tokens in {:.3}s = {:.0} tokens/s; ids {:?}",
        out.len(),
        secs,
        out.len() as f64 / secs,
        &out[..out.len().min(16)]
    );
    Ok(())
}
