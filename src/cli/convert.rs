//! `lrnnx convert IN_DIR OUT_DIR`: a Python lrnnx checkpoint (or ours) to our
//! layout: `config.json` with every default filled in + `model.safetensors`.

use std::path::PathBuf;

use candle_core::Device;
use lrnnx::LRNNLMHeadModel;

/// The flags of `lrnnx convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory to read (`config.json` + `pytorch_model.bin` or `model.safetensors`).
    input: PathBuf,
    /// Directory to write (created if missing).
    output: PathBuf,
    /// Constructor kwargs per mixer type, as lrnnx's `from_pretrained(mixer_kwargs=...)`,
    /// e.g. '{"attn": {"num_heads": 4, "causal": true}}'. lrnnx does not save them.
    #[arg(long)]
    mixer_kwargs: Option<String>,
}

/// Parses a `--mixer-kwargs` JSON object.
pub fn parse_mixer_kwargs(text: Option<&str>) -> anyhow::Result<Option<lrnnx::MixerKwargs>> {
    match text {
        None => Ok(None),
        Some(t) => match serde_json::from_str(t)? {
            serde_json::Value::Object(m) => Ok(Some(m)),
            other => anyhow::bail!(
                "--mixer-kwargs must be a JSON object keyed by mixer type, found {other}"
            ),
        },
    }
}

/// Runs `lrnnx convert`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let kwargs = parse_mixer_kwargs(a.mixer_kwargs.as_deref())?;
    let model = LRNNLMHeadModel::from_pretrained(&a.input, kwargs.as_ref(), &Device::Cpu)?;
    model.save_pretrained(&a.output)?;
    // The tokenizer belongs with the model: without it `generate` would fall
    // back to bytes and print nonsense.
    let tok = a.input.join("tokenizer.json");
    if tok.exists() {
        let bytes = lrnnx::io::read_regular_file(&tok, 64 << 20, "a tokenizer.json")?;
        lrnnx::io::write_atomic(&a.output.join("tokenizer.json"), &bytes)?;
    }
    println!(
        "converted {} -> {} ({} layers, {} parameters)",
        a.input.display(),
        a.output.display(),
        model.config().n_layer,
        model.num_params()
    );
    Ok(())
}
