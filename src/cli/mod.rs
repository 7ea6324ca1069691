//! Subcommands of the `lrnnx` binary.

mod bench;
mod conformance;
mod convert;
mod demo;
mod device;
mod generate;
mod info;
mod main_job;
mod mixers;
mod tokenizer;
mod train;

use clap::{Parser, Subcommand};

/// Linear recurrent sequence models: build, run, check and inspect them.
#[derive(Debug, Parser)]
#[command(name = "lrnnx", version, about, args_override_self = true)]
struct Cli {
    /// Load a mixer plugin (a cdylib built with `lrnnx_framework::export_plugin!`) before running
    /// the command; repeatable. `LRNNX_PLUGIN_PATH` (files or directories, `:`-separated) is
    /// loaded too.
    #[arg(long = "plugin", value_name = "PATH", global = true)]
    plugins: Vec<std::path::PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List registered mixers (name, family, summary, source).
    Mixers(mixers::Args),
    /// Run every lrnnx reference case in a directory.
    Conformance(conformance::Args),
    /// Convert a model directory (Python lrnnx's or ours) to config.json + model.safetensors.
    Convert(convert::Args),
    /// Describe a saved model: layers, parameter count, dtype.
    Info(info::Args),
    /// Train a language model on a text corpus (default: the bundled one).
    Train(Box<train::Args>),
    /// Generate text from a saved model: parallel prefill, then recurrent decoding.
    Generate(generate::Args),
    /// Time mixers and kernels against the copy-bandwidth floor (CPU or CUDA).
    Bench(bench::Args),
    /// Build a small hybrid LRU + attention LM, run a forward pass and a greedy generation (the default).
    Demo(demo::Args),
}

pub fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LRNNX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    lrnnx::init();
    let cli = Cli::parse();
    load_plugins(&cli.plugins)?;
    let Some(command) = cli.command else {
        return main_job::run();
    };
    match command {
        Command::Mixers(a) => mixers::run(a),
        Command::Conformance(a) => conformance::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Info(a) => info::run(a),
        Command::Train(a) => train::run(*a),
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Demo(a) => demo::run(a),
    }
}

/// Loads the plugins of `LRNNX_PLUGIN_PATH` (a failure is a warning: the
/// program keeps running without that plugin), then those given with
/// `--plugin` (a failure is an error).
fn load_plugins(explicit: &[std::path::PathBuf]) -> anyhow::Result<()> {
    for result in lrnnx::plugin::load_env_plugins() {
        if let Err(e) = result {
            tracing::warn!("{}: {e}", lrnnx::plugin::PLUGIN_PATH_VAR);
        }
    }
    for path in explicit {
        lrnnx::plugin::load_plugin(path)?;
    }
    Ok(())
}
