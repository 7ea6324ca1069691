//! `lrnnx info MODEL_DIR`: what a saved model holds.

use std::path::PathBuf;

use lrnnx::LRNNLMHeadModel;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A directory with `config.json` and `model.safetensors` (or lrnnx's `pytorch_model.bin`).
    model: PathBuf,
    /// Constructor kwargs per mixer type for checkpoints that lack them (Python lrnnx's).
    #[arg(long)]
    mixer_kwargs: Option<String>,
    #[command(flatten)]
    device: super::device::DeviceArg,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let kwargs = super::convert::parse_mixer_kwargs(a.mixer_kwargs.as_deref())?;
    let model = LRNNLMHeadModel::from_pretrained(&a.model, kwargs.as_ref(), &a.device.open()?)?;
    let c = model.config();
    println!("model       {}", a.model.display());
    println!("device      {:?}", model.device());
    println!(
        "d_model {}  d_state {}  n_layer {}  vocab {} (padded {})  d_intermediate {}",
        c.d_model,
        c.d_state,
        c.n_layer,
        c.vocab_size,
        c.padded_vocab_size(),
        c.d_intermediate
    );
    println!(
        "norm {}  eps {}  tied embeddings {}",
        if c.rms_norm { "RMSNorm" } else { "LayerNorm" },
        c.norm_epsilon,
        c.tie_embeddings
    );
    let dtypes: std::collections::BTreeSet<String> = model
        .state_dict()
        .values()
        .map(|t| format!("{:?}", t.dtype()))
        .collect();
    println!(
        "parameters  {} ({})",
        model.num_params(),
        dtypes.into_iter().collect::<Vec<_>>().join(", ")
    );
    let layers = c.layers.clone().unwrap_or_default();
    for (i, block) in model.layers().iter().enumerate() {
        let cfg = layers.get(i).map(|v| v.to_string()).unwrap_or_default();
        println!(
            "layer {i:<3} {:<10} {:<10} {cfg}",
            block.mixer.name(),
            block.mixer.family().to_string()
        );
    }
    Ok(())
}
