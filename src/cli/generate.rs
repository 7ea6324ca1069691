//! `lrnnx generate` (being written).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> anyhow::Result<()> {
    anyhow::bail!("`lrnnx generate` is not available yet")
}
