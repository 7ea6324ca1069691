//! `lrnnx generate`: parallel prefill of the prompt, then recurrent decoding,
//! streaming text as it comes.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use lrnnx::{GenerateOpts, LRNNLMHeadModel, LoadOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Model directory (ours, or Python lrnnx's with --mixer-kwargs if it needs them).
    #[arg(long)]
    pub model: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "In the beginning")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Softmax temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Keep the k most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling mass (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// Penalty on tokens already present (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Per-type mixer kwargs for checkpoints that lack them (Python lrnnx's).
    #[arg(long)]
    pub mixer_kwargs: Option<String>,
    #[command(flatten)]
    pub device: super::device::DeviceArg,
    #[command(flatten)]
    pub dtype: super::device::DtypeArg,
}

/// Generates and streams; returns the generated text.
pub fn generate(a: &Args, out: &mut dyn Write) -> anyhow::Result<String> {
    let kwargs = super::convert::parse_mixer_kwargs(a.mixer_kwargs.as_deref())?;
    let load = LoadOptions {
        mixer_kwargs: kwargs,
        precision: Some(a.dtype.for_inference()?),
    };
    let model = LRNNLMHeadModel::from_pretrained_with(&a.model, &load, &a.device.open()?)?;
    let tok = super::tokenizer::for_model(&a.model)?;
    let prompt = tok.encode(&a.prompt)?;
    if prompt.is_empty() {
        anyhow::bail!("the prompt encodes to no tokens; give a non-empty --prompt");
    }
    let opts = GenerateOpts {
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        vocab_limit: Some(model.config().vocab_size),
    };
    write!(out, "{}", a.prompt)?;
    out.flush()?;
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut shown = 0usize;
    let mut write_err = None;
    lrnnx::generate(&model, &prompt, &opts, |t| {
        ids.push(t);
        // Print whatever decodes cleanly so far (multi-byte characters wait for their last byte).
        if let Ok(text) = tok.decode(&ids) {
            let clean = text.trim_end_matches('\u{fffd}');
            if clean.len() > shown {
                if let Err(e) = write!(out, "{}", &clean[shown..]).and_then(|_| out.flush()) {
                    write_err = Some(e);
                }
                shown = clean.len();
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    // What the decoder still held back (an unfinished multi-byte character at
    // the end) is printed too, as the replacement character it decodes to.
    let text = tok.decode(&ids)?;
    if text.len() > shown {
        write!(out, "{}", &text[shown..])?;
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(out)?;
    eprintln!(
        "{} tokens in {:.2}s ({:.1} tokens/s, prompt of {} tokens prefilled in parallel)",
        ids.len(),
        secs,
        ids.len() as f64 / secs,
        prompt.len()
    );
    Ok(text)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    generate(&a, &mut std::io::stdout())?;
    Ok(())
}
