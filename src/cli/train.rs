//! `lrnnx train` (being written).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lrnnx train` is not available yet")
}
