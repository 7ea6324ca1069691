//! `lrnnx mixers`: the registry as a table, built-ins and plugins alike, or
//! (`--json`) as one JSON document.

use lrnnx::{Origin, Registered, Registry};
use serde_json::json;

/// The flags of `lrnnx mixers`. Plugins to list come from the global
/// `--plugin PATH` option and `LRNNX_PLUGIN_PATH`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show one mixer (name or alias): its aliases, family, source and every
    /// default kwarg, as JSON for `mixer_kwargs`.
    pub name: Option<String>,
    /// Print one JSON document instead of the text: `{"mixers": [{"name",
    /// "aliases", "family", "source", "plugin", "summary"}, ...]}` (`plugin`:
    /// the plugin's path, null when linked), or with NAME that mixer's object
    /// with its `defaults`.
    #[arg(long)]
    pub json: bool,
}

/// The SOURCE column: the crate, or `plugin PATH`.
fn source(r: &Registered) -> String {
    match &r.origin {
        Origin::Linked => r.spec.source.to_string(),
        Origin::Plugin(p) => format!("plugin {}", p.display()),
    }
}

/// One registry entry as JSON: what the table and `mixers NAME` print, the
/// crate (`source`) and the plugin's path (`plugin`, null when linked) apart.
fn entry_json(r: &Registered) -> serde_json::Value {
    let plugin = match &r.origin {
        Origin::Linked => None,
        Origin::Plugin(p) => Some(p.display().to_string()),
    };
    json!({
        "name": r.spec.name,
        "aliases": r.spec.aliases,
        "family": r.spec.family.to_string(),
        "source": r.spec.source,
        "plugin": plugin,
        "summary": r.spec.summary,
    })
}

/// Runs `lrnnx mixers`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(name) = args.name {
        return show(&name, args.json);
    }
    let all = Registry::all();
    if args.json {
        let doc = json!({"mixers": all.iter().map(entry_json).collect::<Vec<_>>()});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let rows: Vec<[String; 4]> = all
        .iter()
        .map(|r| {
            [
                r.spec.name.to_string(),
                r.spec.family.to_string(),
                source(r),
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
fn show(name: &str, as_json: bool) -> anyhow::Result<()> {
    let r = Registry::get(name)?;
    let defaults = (r.spec.default_config)();
    if as_json {
        let mut doc = entry_json(&r);
        doc["defaults"] = defaults;
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("name:     {}", r.spec.name);
    println!("aliases:  {}", r.spec.aliases.join(", "));
    println!("family:   {}", r.spec.family);
    println!("source:   {}", r.spec.source);
    println!("summary:  {}", r.spec.summary);
    println!("defaults: {}", serde_json::to_string_pretty(&defaults)?);
    Ok(())
}
