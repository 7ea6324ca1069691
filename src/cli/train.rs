//! `lrnnx train`: a language model on a text corpus (default: the bundled
//! KJV Pentateuch, byte tokens), through the library's
//! [`Trainer`](lrnnx::train::Trainer): AdamW with warm-up + cosine, gradient
//! clipping, periodic validation, a progress bar, crash-consistent checkpoint
//! sets in the Hugging Face layout, `--resume`.

use std::path::{Path, PathBuf};

use lrnnx::train::{SaveTo, TokenBatches, TrainConfig, Trainer};
use lrnnx::{LRNNLMHeadModel, LmConfig};
use serde_json::{json, Map};

/// The corpus `lrnnx train` uses when given none.
pub const BUNDLED_CORPUS: &str = include_str!("../corpus/kjv_pentateuch.txt");

/// Largest corpus read (the whole text is tokenized in memory).
pub const MAX_CORPUS_BYTES: u64 = 4 << 30;
/// Largest model config.json or tokenizer.json read.
pub const MAX_SMALL_FILE_BYTES: u64 = 64 << 20;

/// The mixers of the default run.
pub(crate) const DEFAULT_MIXERS: &str = "LRU,attn,LRU,attn";
/// The mixer kwargs of the default run.
const DEFAULT_MIXER_KWARGS: &str =
    r#"{"attn": {"num_heads": 4, "causal": true, "rotary_emb_dim": 16}}"#;

/// The flags of `lrnnx train`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Comma-separated mixer names, one per layer [default: LRU,attn,LRU,attn].
    #[arg(long)]
    pub mixers: Option<String>,
    /// A model config.json instead of --mixers and the size flags.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model width [default: 128].
    #[arg(long)]
    pub d_model: Option<usize>,
    /// State size [default: 64].
    #[arg(long)]
    pub d_state: Option<usize>,
    /// Gated-MLP width, 0: none [default: 256].
    #[arg(long)]
    pub d_intermediate: Option<usize>,
    /// Per-type mixer kwargs (JSON) [default: attn with 4 causal heads, rotary 16].
    #[arg(long)]
    pub mixer_kwargs: Option<String>,
    /// Text corpus (UTF-8); default: the bundled public-domain corpus.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Hugging Face tokenizer.json; default: bytes.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 400)]
    pub steps: usize,
    /// Sequences per micro-batch (a step trains on --grad-accum of them).
    #[arg(long = "batch-size", visible_alias = "batch", default_value_t = 16)]
    pub batch_size: usize,
    /// Micro-batches whose gradients each optimizer step sums (one step over
    /// batch-size * grad-accum sequences, in the memory of one micro-batch).
    #[arg(long = "grad-accum", default_value_t = 1)]
    pub grad_accum: usize,
    /// Tokens per sequence.
    #[arg(long = "seq-len", visible_alias = "seqlen", default_value_t = 64)]
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
    /// Output directory: one checkpoint set (model, optimizer state,
    /// trainer.json, checkpoint.json), replaced as a whole at each save.
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Continue from a checkpoint directory written by `lrnnx train`.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub device: super::device::DeviceArg,
    #[command(flatten)]
    pub dtype: super::device::DtypeArg,
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

impl Args {
    /// The hyper-parameters the flags give.
    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            save_every: self.save_every,
            val_fraction: self.val_fraction,
            seed: self.seed,
            grad_accum_steps: self.grad_accum,
        }
    }

    /// The model-shaping flags given on the command line, by name.
    fn model_flags(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (name, given) in [
            ("--mixers", self.mixers.is_some()),
            ("--config", self.config.is_some()),
            ("--d-model", self.d_model.is_some()),
            ("--d-state", self.d_state.is_some()),
            ("--d-intermediate", self.d_intermediate.is_some()),
            ("--mixer-kwargs", self.mixer_kwargs.is_some()),
        ] {
            if given {
                v.push(name);
            }
        }
        v
    }
}

fn read_text(path: &Path, max: u64, what: &str) -> anyhow::Result<String> {
    let bytes = lrnnx::io::read_regular_file(path, max, what)?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: {what} is not UTF-8 text: {e}", path.display()))
}

fn model_config(a: &Args, vocab: usize) -> anyhow::Result<LmConfig> {
    if let Some(p) = &a.config {
        let text = read_text(p, MAX_SMALL_FILE_BYTES, "a model config.json")?;
        return LmConfig::from_json_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
    }
    let mixers = a.mixers.as_deref().unwrap_or(DEFAULT_MIXERS);
    let names: Vec<&str> = mixers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        anyhow::bail!("--mixers names no mixer");
    }
    let mut c = LmConfig::new(
        a.d_model.unwrap_or(128),
        a.d_state.unwrap_or(64),
        vocab,
        &names,
    );
    c.d_intermediate = a.d_intermediate.unwrap_or(256);
    c.fused_add_norm = false;
    let kwargs = a.mixer_kwargs.as_deref().unwrap_or(DEFAULT_MIXER_KWARGS);
    c.mixer_kwargs = match serde_json::from_str(kwargs)? {
        serde_json::Value::Object(m) => m,
        other => anyhow::bail!("--mixer-kwargs must be a JSON object, found {other}"),
    };
    if a.mixer_kwargs.is_none() {
        // The default names attn; keep it only when a layer is attn.
        let used: Vec<String> = c.mixer_types.clone();
        c.mixer_kwargs.retain(|k, _| used.contains(k));
    }
    Ok(c)
}

/// The tokenizer file of the run: `--tokenizer`, or the resumed set's.
/// Resuming with a tokenizer other than the checkpoint's is an error.
fn tokenizer_file(a: &Args) -> anyhow::Result<Option<(PathBuf, Vec<u8>)>> {
    let given = match &a.tokenizer {
        Some(p) => Some((
            p.clone(),
            lrnnx::io::read_regular_file(p, MAX_SMALL_FILE_BYTES, "a tokenizer.json")?,
        )),
        None => None,
    };
    let Some(dir) = &a.resume else {
        return Ok(given);
    };
    let saved = dir.join("tokenizer.json");
    let saved = saved
        .exists()
        .then(|| {
            lrnnx::io::read_regular_file(&saved, MAX_SMALL_FILE_BYTES, "a tokenizer.json")
                .map(|b| (saved, b))
        })
        .transpose()?;
    match (given, saved) {
        (Some((p, g)), Some((_, s))) if g != s => anyhow::bail!(
            "--tokenizer {} differs from the tokenizer.json the checkpoint {} was trained with",
            p.display(),
            dir.display()
        ),
        (Some((p, _)), None) => anyhow::bail!(
            "--tokenizer {} given, but the checkpoint {} was trained on bytes (it has no tokenizer.json)",
            p.display(),
            dir.display()
        ),
        (g, s) => Ok(g.or(s)),
    }
}

/// Refuses model-shaping flags that disagree with the checkpoint's model.
fn check_resume_flags(a: &Args, model: &LmConfig, vocab: usize) -> anyhow::Result<()> {
    let flags = a.model_flags();
    if flags.is_empty() {
        return Ok(());
    }
    let wanted = model_config(a, vocab)?;
    let differs = wanted.mixer_types != model.mixer_types
        || wanted.d_model != model.d_model
        || wanted.d_state != model.d_state
        || wanted.d_intermediate != model.d_intermediate
        || wanted.n_layer != model.n_layer
        || (a.mixer_kwargs.is_some() && wanted.mixer_kwargs != model.mixer_kwargs);
    if differs {
        anyhow::bail!(
            "{} given with --resume, but the checkpoint's model is {:?} with d_model {}, d_state {}, \
             d_intermediate {}; drop the flags or match them",
            flags.join(", "),
            model.mixer_types,
            model.d_model,
            model.d_state,
            model.d_intermediate
        );
    }
    Ok(())
}

/// Runs training as configured; returns the final validation loss and throughput.
pub fn train(a: &Args) -> anyhow::Result<Summary> {
    let dev = a.device.open()?;
    let precision = a.dtype.for_training()?;
    let tok_file = tokenizer_file(a)?;
    let tokenizer = super::tokenizer::load(tok_file.as_ref().map(|(p, _)| p.as_path()))?;
    let text = match &a.corpus {
        Some(p) => read_text(p, MAX_CORPUS_BYTES, "a UTF-8 corpus")?,
        None => BUNDLED_CORPUS.to_string(),
    };
    let cfg = a.train_config();
    // Checked before the corpus is tokenized and batched.
    cfg.validate(tokenizer.vocab_size())?;
    let ids = tokenizer.encode(&text)?;
    let data = TokenBatches::new(ids, cfg.seq_len, cfg.val_fraction, cfg.seed)?;
    let trainer = match &a.resume {
        Some(dir) => {
            lrnnx::train::recover_checkpoint(dir)?;
            let t = Trainer::resume(dir, data, cfg, &dev)?.with_compute_dtype(precision.compute)?;
            check_resume_flags(a, t.model().config(), tokenizer.vocab_size())?;
            t
        }
        None => {
            let config = model_config(a, tokenizer.vocab_size())?;
            let model = LRNNLMHeadModel::init_with(config, a.seed, &dev, precision)?;
            Trainer::new(model, data, cfg)?
        }
    };
    let start_step = trainer.step_count();
    tracing::info!(
        params = trainer.model().num_params(),
        layers = ?trainer.model().config().mixer_types,
        unigram_entropy = trainer.unigram_entropy(),
        start_step,
        device = ?dev,
        precision = ?trainer.model().precision(),
        "training"
    );
    let mut info = Map::new();
    info.insert(
        "corpus".into(),
        json!(a.corpus.as_ref().map(|p| p.display().to_string())),
    );
    let mut to = SaveTo::new(&a.out);
    to.info = info;
    if let Some((_, b)) = &tok_file {
        to.extra_files.push(("tokenizer.json".into(), b.clone()));
    }
    let mut trainer = trainer.with_checkpoints(to);
    let mut progress =
        super::progress::Progress::new(a.steps, start_step, trainer.last_val_loss(), a.quiet)?;
    let fit = trainer.fit(&mut [&mut progress])?;
    progress.finish();
    Ok(Summary {
        val_loss: fit.val_loss,
        unigram_entropy: trainer.unigram_entropy(),
        tokens_per_s: fit.tokens_per_s,
    })
}

/// Runs `lrnnx train` and prints its summary.
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
