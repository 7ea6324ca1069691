//! `lrnnx generate`: parallel prefill of the prompt, then recurrent decoding,
//! streaming text as it comes.

use std::io::Write;
use std::time::Instant;

use lrnnx::{GenerateOpts, LRNNLMHeadModel, LoadOptions};

use super::stream::TextStream;

/// The flags of `lrnnx generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: super::model_arg::ModelArg,
    /// Text to continue.
    #[arg(long, default_value = "In the beginning")]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long = "max-tokens", visible_alias = "tokens", default_value_t = 200)]
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

/// Generates and streams the text of each new token as it comes (see
/// [`TextStream`](super::stream::TextStream)); returns the decode of every
/// generated id, which is what was printed after the prompt.
pub fn generate(a: &Args, out: &mut dyn Write) -> anyhow::Result<String> {
    let kwargs = super::convert::parse_mixer_kwargs(a.mixer_kwargs.as_deref())?;
    let load = LoadOptions {
        mixer_kwargs: kwargs,
        precision: Some(a.dtype.for_inference()?),
    };
    let dir = a.model.path()?;
    let model = LRNNLMHeadModel::from_pretrained_with(dir, &load, &a.device.open()?)?;
    let tok = super::tokenizer::for_model(dir)?;
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
    let mut stream = TextStream::new(tok.as_ref());
    // The first failure (decoding or writing) stops the printing; it is
    // returned once generation ends.
    let mut failed: Option<anyhow::Error> = None;
    lrnnx::generate(&model, &prompt, &opts, |t| {
        if failed.is_some() {
            return;
        }
        let printed = stream
            .push(t)
            .map_err(anyhow::Error::from)
            .and_then(|piece| {
                if !piece.is_empty() {
                    write!(out, "{piece}")?;
                    out.flush()?;
                }
                Ok(())
            });
        if let Err(e) = printed {
            failed = Some(e);
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let n = stream.ids().len();
    let end = stream.finish()?;
    // What the decoder still held back (an unfinished multi-byte character at
    // the end) is printed too, as the replacement character it decodes to.
    write!(out, "{}", end.rest)?;
    writeln!(out)?;
    if !end.consistent {
        eprintln!(
            "warning: this tokenizer decodes the generated ids as a whole differently from \
             token by token; the whole decode is:\n{}",
            end.whole
        );
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} tokens in {:.2}s ({:.1} tokens/s, prompt of {} tokens prefilled in parallel)",
        n,
        secs,
        n as f64 / secs,
        prompt.len()
    );
    Ok(end.whole)
}

/// Runs `lrnnx generate`, printing to stdout.
pub fn run(a: Args) -> anyhow::Result<()> {
    generate(&a, &mut std::io::stdout())?;
    Ok(())
}
