//! Build a hybrid LRU + attention language model by name, run it, decode from it,
//! save it and load it back.
//!
//!     cargo run --release --example quickstart

use candle_core::{Device, Tensor};
use lrnnx::{generate, GenerateOpts, LRNNLMHeadModel, LmConfig, LmForwardOpts};

fn main() -> anyhow::Result<()> {
    lrnnx::init();
    let mut cfg = LmConfig::new(128, 32, 256, &["LRU", "attn", "LRU"]);
    cfg.d_intermediate = 256;
    cfg.mixer_kwargs = serde_json::from_str(
        r#"{"attn": {"num_heads": 4, "num_heads_kv": 2, "causal": true, "rotary_emb_dim": 16}, "LRU": {"r_min": 0.9}}"#,
    )?;
    let model = LRNNLMHeadModel::init(cfg, 0, &Device::Cpu)?;
    println!("{} parameters", model.num_params());

    let prompt: Vec<u32> = "Hello, recurrent world".bytes().map(u32::from).collect();
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&ids, &LmForwardOpts::default())?;
    println!("logits {:?}", logits.dims());

    let opts = GenerateOpts {
        max_new_tokens: 16,
        temperature: 0.8,
        top_k: 40,
        seed: 1,
        ..Default::default()
    };
    let out = generate(&model, &prompt, &opts, |t| print!("{t} "))?;
    println!("\n{} tokens generated", out.len());

    let dir = std::env::temp_dir().join("lrnnx-quickstart");
    model.save_pretrained(&dir)?;
    let again = LRNNLMHeadModel::from_pretrained(&dir, None, &Device::Cpu)?;
    let same = (again.forward(&ids, &LmForwardOpts::default())? - logits)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    println!(
        "saved to {} and reloaded: max logit difference {same}",
        dir.display()
    );
    Ok(())
}
