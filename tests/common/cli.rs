//! Running the `lrnnx` binary built for these tests.

use std::path::Path;
use std::process::Command;

/// What one run of the binary gave back.
pub struct Ran {
    /// Whether it exited with status 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Ran {
    /// Standard output followed by standard error.
    pub fn text(&self) -> String {
        self.stdout.clone() + &self.stderr
    }
}

/// A command for the `lrnnx` binary, nothing set yet.
pub fn lrnnx() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lrnnx"))
}

/// Runs `cmd` to the end and collects its exit status and output.
pub fn run(cmd: &mut Command) -> Ran {
    let out = cmd.output().expect("running the lrnnx binary");
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `lrnnx args…` to the end.
pub fn run_lrnnx(args: &[&str]) -> Ran {
    run(lrnnx().args(args))
}

/// `lrnnx train` of a tiny model of `mixers` (comma-separated) on the
/// built-in corpus: d_model 16, d_state 8, no MLP, batches of 2 × 16 tokens,
/// one evaluation batch, no warm-up, quiet, written to `out`. Flags added
/// later override these.
pub fn tiny_train(mixers: &str, out: &Path) -> Command {
    let mut c = lrnnx();
    c.args([
        "train",
        "--mixers",
        mixers,
        "--d-model",
        "16",
        "--d-state",
        "8",
        "--d-intermediate",
        "0",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--eval-batches",
        "1",
        "--warmup",
        "0",
        "--quiet",
    ])
    .arg("--out")
    .arg(out);
    c
}
