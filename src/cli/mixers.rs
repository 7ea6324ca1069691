//! `lrnnx mixers`: the registry as a table, built-ins and plugins alike.

use lrnnx::{Origin, Registry};

/// Plugins to list come from the global `--plugin PATH` option and `LRNNX_PLUGIN_PATH`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show one mixer (name or alias): its aliases, family, source and every
    /// default kwarg, as JSON for `mixer_kwargs`.
    pub name: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(name) = args.name {
        return show(&name);
    }
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

/// Prints one registry entry with its default kwargs (`d_state` and the
/// required kwargs are not among them: the model and the user give those).
fn show(name: &str) -> anyhow::Result<()> {
    let r = Registry::get(name)?;
    println!("name:     {}", r.spec.name);
    println!("aliases:  {}", r.spec.aliases.join(", "));
    println!("family:   {}", r.spec.family);
    println!("source:   {}", r.spec.source);
    println!("summary:  {}", r.spec.summary);
    println!(
        "defaults: {}",
        serde_json::to_string_pretty(&(r.spec.default_config)())?
    );
    Ok(())
}
