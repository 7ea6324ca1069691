//! `lrnnx info MODEL` (or `--model MODEL`): what a saved model holds, as
//! text or (`--json`) one JSON document.

use lrnnx::LRNNLMHeadModel;
use serde_json::json;

/// The flags of `lrnnx info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: super::model_arg::ModelArg,
    /// Per-type mixer kwargs for checkpoints that lack them (Python lrnnx's).
    #[arg(long)]
    mixer_kwargs: Option<String>,
    /// Print one JSON document (model, device, config, parameters, dtypes,
    /// layers) instead of the text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: super::device::DeviceArg,
}

/// Runs `lrnnx info`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let kwargs = super::convert::parse_mixer_kwargs(a.mixer_kwargs.as_deref())?;
    let dir = a.model.path()?;
    let model = LRNNLMHeadModel::from_pretrained(dir, kwargs.as_ref(), &a.device.open()?)?;
    let c = model.config();
    let dtypes: Vec<String> = model
        .state_dict()
        .values()
        .map(|t| format!("{:?}", t.dtype()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let norm = if c.rms_norm { "RMSNorm" } else { "LayerNorm" };
    let configs = c.layers.clone().unwrap_or_default();
    // (mixer, family, the layer's saved config if any)
    let layers: Vec<(String, String, Option<serde_json::Value>)> = model
        .layers()
        .iter()
        .enumerate()
        .map(|(i, block)| {
            (
                block.mixer.name().to_string(),
                block.mixer.family().to_string(),
                configs.get(i).cloned(),
            )
        })
        .collect();
    if a.json {
        let doc = json!({
            "model": dir.display().to_string(),
            "device": format!("{:?}", model.device()),
            "d_model": c.d_model,
            "d_state": c.d_state,
            "n_layer": c.n_layer,
            "vocab_size": c.vocab_size,
            "padded_vocab_size": c.padded_vocab_size(),
            "d_intermediate": c.d_intermediate,
            "norm": norm,
            "norm_epsilon": c.norm_epsilon,
            "tie_embeddings": c.tie_embeddings,
            "parameters": model.num_params(),
            "dtypes": dtypes,
            "layers": layers
                .iter()
                .enumerate()
                .map(|(i, (mixer, family, config))| {
                    json!({"index": i, "mixer": mixer, "family": family, "config": config})
                })
                .collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("model       {}", dir.display());
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
        "norm {norm}  eps {}  tied embeddings {}",
        c.norm_epsilon, c.tie_embeddings
    );
    println!("parameters  {} ({})", model.num_params(), dtypes.join(", "));
    for (i, (mixer, family, config)) in layers.iter().enumerate() {
        let cfg = config.as_ref().map(|v| v.to_string()).unwrap_or_default();
        println!("layer {i:<3} {mixer:<10} {family:<10} {cfg}");
    }
    Ok(())
}
