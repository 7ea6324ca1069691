//! `lrnnx mixers`: the registry as a table.

use lrnnx::{Origin, Registry};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> anyhow::Result<()> {
    println!("{:<12} {:<10} {:<18} SUMMARY", "NAME", "FAMILY", "SOURCE");
    for r in Registry::all() {
        let source = match &r.origin {
            Origin::Linked => r.spec.source.to_string(),
            Origin::Plugin(p) => format!("plugin {}", p.display()),
        };
        println!(
            "{:<12} {:<10} {:<18} {}",
            r.spec.name,
            r.spec.family.to_string(),
            source,
            r.spec.summary
        );
    }
    Ok(())
}
