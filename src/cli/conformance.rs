//! `lrnnx conformance DIR`: run lrnnx reference cases.

use std::path::PathBuf;

use lrnnx::conformance::{run_dir_on, summary};

/// The flags of `lrnnx conformance`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of reference cases (`*.safetensors` files and checkpoint directories).
    dir: PathBuf,
    #[command(flatten)]
    device: super::device::DeviceArg,
}

/// Runs `lrnnx conformance`; exits with status 1 when a case fails.
pub fn run(a: Args) -> anyhow::Result<()> {
    let results = run_dir_on(&a.dir, &a.device.open()?)?;
    println!("{:<28} {:>10} {:>10}  RESULT", "CASE", "MAX ABS", "REL");
    for r in &results {
        println!("{}", r.line());
    }
    let (pass, fail, skip) = summary(&results);
    println!("{pass} passed, {fail} failed, {skip} skipped");
    if fail > 0 {
        std::process::exit(1);
    }
    Ok(())
}
