//! `lrnnx mixers`: the registry as a table, built-ins and plugins alike.

use lrnnx::{Origin, Registry};

/// Plugins to list come from the global `--plugin PATH` option and `LRNNX_PLUGIN_PATH`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> anyhow::Result<()> {
    let rows: Vec<[String; 4]> = Registry::all()
        .into_iter()
        .map(|r| {
            let source = match &r.origin {
                Origin::Linked => r.spec.source.to_string(),
                Origin::Plugin(p) => format!("plugin {}", p.display()),
            };
            [
                r.spec.name.to_string(),
                r.spec.family.to_string(),
                source,
                r.spec.summary.to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "FAMILY", "SOURCE", "SUMMARY"].map(String::from);
    let width = |i: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0).max(12), width(1).max(10), width(2).max(18));
    for r in std::iter::once(&header).chain(&rows) {
        println!("{:<w0$} {:<w1$} {:<w2$} {}", r[0], r[1], r[2], r[3]);
    }
    Ok(())
}
