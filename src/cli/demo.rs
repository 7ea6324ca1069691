//! The default job: a small hybrid LRU + attention LM, one forward pass and a
//! greedy generation, with throughput.

use std::time::Instant;

use candle_core::Tensor;
use lrnnx::{generate, GenerateOpts, LRNNLMHeadModel, LmConfig, LmForwardOpts};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model width.
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// Batch of the forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Sequence length of the forward pass.
    #[arg(long, default_value_t = 1024)]
    seqlen: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    #[command(flatten)]
    device: super::device::DeviceArg,
    #[command(flatten)]
    dtype: super::device::DtypeArg,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            d_model: 256,
            batch: 8,
            seqlen: 1024,
            tokens: 64,
            device: Default::default(),
            dtype: Default::default(),
        }
    }
}

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
    let ids: Vec<u32> = (0..a.batch * a.seqlen)
        .map(|i| ((i * 31 + 7) % 256) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (a.batch, a.seqlen), &dev)?;
    let t = Instant::now();
    let logits = model.forward(&ids, &LmForwardOpts::default())?;
    dev.synchronize()?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "forward  B={} L={}: logits {:?} in {:.3}s = {:.0} tokens/s",
        a.batch,
        a.seqlen,
        logits.dims(),
        secs,
        (a.batch * a.seqlen) as f64 / secs
    );
    let prompt: Vec<u32> = "The quick brown fox".bytes().map(u32::from).collect();
    let opts = GenerateOpts {
        max_new_tokens: a.tokens,
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
