//! The default job (`lrnnx` with no subcommand): train the default small hybrid
//! model on the bundled corpus, report validation loss against the corpus's
//! unigram entropy, then generate a sample from the checkpoint.

/// Runs the default job: trains, reports, samples.
pub fn run() -> anyhow::Result<()> {
    let args = super::train::Args::default();
    println!(
        "training {} (d_model {}) on the bundled corpus for {} steps -> {}",
        args.mixers
            .as_deref()
            .unwrap_or(super::train::DEFAULT_MIXERS),
        args.d_model.unwrap_or(128),
        args.steps,
        args.out.display()
    );
    let summary = super::train::train(&args)?;
    println!(
        "validation loss {:.3} nats/token vs unigram entropy {:.3}: {:.1}% lower ({:.0} tokens/s)",
        summary.val_loss,
        summary.unigram_entropy,
        100.0 * (1.0 - summary.val_loss / summary.unigram_entropy),
        summary.tokens_per_s
    );
    let gen = super::generate::Args {
        model: super::model_arg::ModelArg::new(args.out.clone()),
        prompt: "And God said".into(),
        max_tokens: 300,
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        repetition_penalty: 1.0,
        seed: 0,
        mixer_kwargs: None,
        device: args.device.clone(),
        dtype: Default::default(),
    };
    super::generate::generate(&gen, &mut std::io::stdout())?;
    Ok(())
}
