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
mod model_arg;
mod progress;
mod stream;
mod tokenizer;
mod train;

use clap::{Parser, Subcommand};

/// Linear recurrent sequence models: build, run, check and inspect them.
#[derive(Debug, Parser)]
#[command(
    name = "lrnnx",
    version,
    about,
    args_override_self = true,
    after_help = "With no command, lrnnx runs its main job: it trains the default LRU,attn,LRU,attn \
                  model on the bundled corpus into runs/default, reports its validation loss, then \
                  generates a sample from it."
)]
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
    /// List registered mixers: name, family, source, summary (--json: as JSON).
    Mixers(mixers::Args),
    /// Run every lrnnx reference case in a directory.
    Conformance(conformance::Args),
    /// Convert a model directory (Python lrnnx's or ours) to config.json + model.safetensors.
    Convert(convert::Args),
    /// Describe a saved model: layers, parameter count, dtype (--json: as JSON).
    Info(info::Args),
    /// Train a language model on a text corpus (default: the bundled one).
    Train(Box<train::Args>),
    /// Generate text from a saved model: parallel prefill, then recurrent decoding.
    Generate(generate::Args),
    /// Time mixers and kernels against the copy-bandwidth floor (CPU or CUDA).
    Bench(bench::Args),
    /// Build a small untrained hybrid LRU + attention LM, time a forward pass and a greedy generation.
    Demo(demo::Args),
}

/// Parses the command line and runs the command (the main job without one).
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// The parsed command of `lrnnx args…`, as its Debug text.
    fn parsed(args: &[&str]) -> String {
        let argv = std::iter::once("lrnnx").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => format!("{:?}", cli.command),
            Err(e) => panic!("{args:?} does not parse: {e}"),
        }
    }

    /// Every old spelling parses to what the canonical one does, and both
    /// differ from giving neither (the value is not dropped).
    #[test]
    fn old_spellings_parse_as_the_canonical_flags() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (
                &["demo", "--seqlen", "16", "--tokens", "4", "--batch", "2"],
                &[
                    "demo",
                    "--seq-len",
                    "16",
                    "--max-tokens",
                    "4",
                    "--batch-size",
                    "2",
                ],
                &["demo"],
            ),
            (
                &[
                    "bench", "--seqlen", "16", "--batch", "2", "--json", "b.json",
                ],
                &[
                    "bench",
                    "--seq-len",
                    "16",
                    "--batch-size",
                    "2",
                    "--json-out",
                    "b.json",
                ],
                &["bench"],
            ),
            (
                &["train", "--seqlen", "16", "--batch", "2"],
                &["train", "--seq-len", "16", "--batch-size", "2"],
                &["train"],
            ),
            (
                &["generate", "--model", "m", "--tokens", "5"],
                &["generate", "m", "--max-tokens", "5"],
                &["generate", "other"],
            ),
            (
                &["info", "--model", "m"],
                &["info", "m"],
                &["info", "other"],
            ),
        ];
        for (old, canonical, neither) in cases {
            let (o, c, n) = (parsed(old), parsed(canonical), parsed(neither));
            assert_eq!(o, c, "{old:?} vs {canonical:?}");
            assert_ne!(c, n, "{canonical:?} parses like {neither:?}");
        }
        // The values land in the fields they name.
        let demo = parsed(&["demo", "--seqlen", "16", "--tokens", "4", "--batch", "2"]);
        for field in ["seq_len: 16", "max_tokens: 4", "batch_size: 2"] {
            assert!(demo.contains(field), "{field} not in {demo}");
        }
    }

    #[test]
    fn a_model_directory_is_required_once() {
        let argv = |args: &[&'static str]| std::iter::once("lrnnx").chain(args.to_vec());
        let e = Cli::try_parse_from(argv(&["generate"])).unwrap_err();
        assert!(e.to_string().contains("MODEL"), "{e}");
        let e = Cli::try_parse_from(argv(&["info", "a", "--model", "b"])).unwrap_err();
        assert!(e.to_string().contains("cannot be used with"), "{e}");
    }
}
