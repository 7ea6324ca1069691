//! `lrnnx train`: a language model on a text corpus (default: the bundled
//! KJV Pentateuch, byte tokens), AdamW with warm-up + cosine, gradient
//! clipping, periodic validation, a progress bar, atomic checkpoints in the
//! Hugging Face layout, `--resume`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use lrnnx::train::{clip_grad_norm, cross_entropy, AdamW, AdamWConfig, TokenBatches, WarmupCosine};
use lrnnx::{LRNNLMHeadModel, LmConfig, LmForwardOpts};
use serde_json::json;

/// The corpus `lrnnx train` uses when given none.
pub const BUNDLED_CORPUS: &str = include_str!("../corpus/kjv_pentateuch.txt");

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Comma-separated mixer names, one per layer.
    #[arg(long, default_value = "LRU,attn,LRU,attn")]
    pub mixers: String,
    /// A model config.json instead of --mixers and the size flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// State size.
    #[arg(long, default_value_t = 64)]
    pub d_state: usize,
    /// Gated-MLP width (0: none).
    #[arg(long, default_value_t = 256)]
    pub d_intermediate: usize,
    /// Per-type mixer kwargs (JSON).
    #[arg(
        long,
        default_value = r#"{"attn": {"num_heads": 4, "causal": true, "rotary_emb_dim": 16}}"#
    )]
    pub mixer_kwargs: String,
    /// Text corpus (UTF-8); default: the bundled public-domain corpus.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Hugging Face tokenizer.json; default: bytes.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 400)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Final learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub min_lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 40)]
    pub warmup: usize,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// Validate every this many steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 200)]
    pub save_every: usize,
    /// Fraction of the corpus held out for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Seed of initialisation and batch sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (model, optimizer state, trainer.json).
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Continue from a checkpoint directory written by `lrnnx train`.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for Args {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: Args,
        }
        Wrapper::parse_from(["train"]).args
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Last validation loss (nats per token).
    pub val_loss: f64,
    /// Unigram entropy of the training tokens (nats per token).
    pub unigram_entropy: f64,
    /// Training throughput.
    pub tokens_per_s: f64,
}

fn model_config(a: &Args, vocab: usize) -> anyhow::Result<LmConfig> {
    if let Some(p) = &a.config {
        let text =
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        return LmConfig::from_json_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
    }
    let names: Vec<&str> = a
        .mixers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        anyhow::bail!("--mixers names no mixer");
    }
    let mut c = LmConfig::new(a.d_model, a.d_state, vocab, &names);
    c.d_intermediate = a.d_intermediate;
    c.fused_add_norm = false;
    c.mixer_kwargs = match serde_json::from_str(&a.mixer_kwargs)? {
        serde_json::Value::Object(m) => m,
        other => anyhow::bail!("--mixer-kwargs must be a JSON object, found {other}"),
    };
    // Keep only the entries of types in use (the default names attn).
    let used: Vec<String> = c.mixer_types.clone();
    if c.mixer_kwargs
        .keys()
        .any(|k| used.contains(k) || lrnnx::Registry::get(k).is_ok())
    {
        c.mixer_kwargs.retain(|k, _| used.contains(k));
    }
    Ok(c)
}

fn evaluate(model: &LRNNLMHeadModel, batches: &[(Tensor, Tensor)]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for (x, y) in batches {
        let logits = model.forward(x, &LmForwardOpts::default())?;
        total += cross_entropy(&logits, y)?.to_scalar::<f32>()? as f64;
    }
    Ok(total / batches.len().max(1) as f64)
}

fn save(
    model: &LRNNLMHeadModel,
    opt: &AdamW,
    a: &Args,
    tokenizer: Option<&Path>,
    val: f64,
) -> anyhow::Result<()> {
    model.save_pretrained(&a.out)?;
    lrnnx::io::write_safetensors(&a.out.join("optimizer.safetensors"), &opt.state(), None)?;
    if let Some(t) = tokenizer {
        let dst = a.out.join("tokenizer.json");
        if t != dst {
            lrnnx::io::write_atomic(&dst, &std::fs::read(t)?)?;
        }
    }
    // Written last: a checkpoint is complete when trainer.json names its step.
    lrnnx::io::write_json(
        &a.out.join("trainer.json"),
        &json!({"step": opt.step, "steps": a.steps, "seed": a.seed, "val_loss": val,
                "corpus": a.corpus.as_ref().map(|p| p.display().to_string())}),
    )?;
    Ok(())
}

/// Runs training as configured; returns the final validation loss and throughput.
pub fn train(a: &Args) -> anyhow::Result<Summary> {
    let dev = Device::Cpu;
    let tokenizer_path = a.tokenizer.clone().or_else(|| {
        a.resume
            .as_ref()
            .map(|d| d.join("tokenizer.json"))
            .filter(|p| p.exists())
    });
    let tokenizer = super::tokenizer::load(tokenizer_path.as_deref())?;
    let text = match &a.corpus {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => BUNDLED_CORPUS.to_string(),
    };
    let ids = tokenizer.encode(&text)?;
    let mut data = TokenBatches::new(ids, a.seq_len, a.val_fraction, a.seed)?;
    let (model, start_step, opt_state) = match &a.resume {
        Some(dir) => {
            let model = LRNNLMHeadModel::from_pretrained(dir, None, &dev)?;
            let meta = lrnnx::io::read_json(&dir.join("trainer.json"))?;
            let step = meta["step"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("{}: no step", dir.display()))?
                as usize;
            let state = lrnnx::io::read_safetensors(&dir.join("optimizer.safetensors"), &dev)?;
            (model, step, Some(state))
        }
        None => (
            LRNNLMHeadModel::init(model_config(a, tokenizer.vocab_size())?, a.seed, &dev)?,
            0,
            None,
        ),
    };
    let vars = model.store().vars();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..Default::default()
        },
    )?;
    if let Some(state) = opt_state {
        opt.load_state(&state, start_step)?;
        // Batches continue where they stopped.
        for _ in 0..start_step {
            data.train_batch(a.batch_size, &dev)?;
        }
    }
    let schedule = WarmupCosine {
        max_lr: a.lr,
        min_lr: a.min_lr,
        warmup: a.warmup,
        total: a.steps,
    };
    let val_batches = data.val_batches(a.batch_size, a.eval_batches, &dev)?;
    let unigram = data.unigram_entropy();
    tracing::info!(
        params = model.num_params(),
        layers = ?model.config().mixer_types,
        unigram_entropy = unigram,
        "training"
    );
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(a.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    bar.set_position(start_step as u64);
    let started = Instant::now();
    let tokens_per_step = a.batch_size * a.seq_len;
    let mut val = f64::NAN;
    let mut ema: Option<f64> = None;
    for step in start_step..a.steps {
        opt.config.lr = schedule.lr(step);
        let (x, y) = data.train_batch(a.batch_size, &dev)?;
        let loss = cross_entropy(&model.forward(&x, &LmForwardOpts::default())?, &y)?;
        let mut grads = loss.backward()?;
        if a.grad_clip > 0.0 {
            clip_grad_norm(&mut grads, &vars, a.grad_clip)?;
        }
        opt.step(&grads)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            anyhow::bail!("training diverged at step {step}: loss {l}; lower --lr");
        }
        ema = Some(ema.map_or(l, |e| 0.95 * e + 0.05 * l));
        let done = step + 1;
        let tps = ((done - start_step) * tokens_per_step) as f64 / started.elapsed().as_secs_f64();
        if done % a.eval_every == 0 || done == a.steps {
            val = evaluate(&model, &val_batches)?;
            tracing::info!(
                step = done,
                train_loss = ema.unwrap_or(l),
                val_loss = val,
                "validation"
            );
        }
        bar.set_message(format!(
            "loss {:.3} val {:.3} lr {:.1e} {:.0} tok/s",
            ema.unwrap_or(l),
            val,
            opt.config.lr,
            tps
        ));
        bar.inc(1);
        if done % a.save_every == 0 || done == a.steps {
            save(&model, &opt, a, tokenizer_path.as_deref(), val)?;
        }
    }
    bar.finish();
    if val.is_nan() {
        val = evaluate(&model, &val_batches)?;
    }
    let steps_run = a.steps.saturating_sub(start_step).max(1);
    Ok(Summary {
        val_loss: val,
        unigram_entropy: unigram,
        tokens_per_s: (steps_run * tokens_per_step) as f64 / started.elapsed().as_secs_f64(),
    })
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let s = train(&a)?;
    println!(
        "validation loss {:.4} nats/token ({:.3} bits); unigram entropy {:.4} nats ({:.3} bits); {:.0} tokens/s; saved to {}",
        s.val_loss,
        s.val_loss / std::f64::consts::LN_2,
        s.unigram_entropy,
        s.unigram_entropy / std::f64::consts::LN_2,
        s.tokens_per_s,
        a.out.display()
    );
    Ok(())
}
