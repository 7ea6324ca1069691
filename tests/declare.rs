//! Every built-in mixer's declaration (`lrnnx::mixers!`): default kwargs,
//! required kwargs, unknown kwargs, and `d_state` from the model.

use candle_core::{DType, Device};
use lrnnx::{BuildArgs, ParamStore, Registry};
use serde_json::{json, Map, Value};

/// The kwargs without which a mixer does not build (lrnnx gives them no default).
fn required(name: &str) -> Map<String, Value> {
    let v = match name {
        "attn" => json!({"num_heads": 2}),
        "Centaurus" => json!({"sub_state_dim": 2}),
        "S5" => json!({"discretization": "zoh"}),
        _ => json!({}),
    };
    v.as_object().cloned().unwrap_or_default()
}

fn args(kwargs: Map<String, Value>) -> BuildArgs {
    BuildArgs {
        d_model: 8,
        d_state: 4,
        layer_idx: 3,
        kwargs,
        params: ParamStore::init(0, DType::F32, &Device::Cpu).builder(),
    }
}

fn built_config(name: &str, kwargs: Map<String, Value>) -> lrnnx::Result<Value> {
    let m = Registry::build(name, &args(kwargs))?;
    lrnnx::config_to_json(m.config())
}

#[test]
fn default_kwargs_are_what_an_empty_build_uses() {
    lrnnx::init();
    for name in lrnnx::builtin_mixers() {
        let spec = Registry::get(name).unwrap().spec;
        let defaults = (spec.default_config)();
        let defaults = defaults
            .as_object()
            .unwrap_or_else(|| panic!("{name}: {defaults}"));
        assert!(!defaults.contains_key("d_state"), "{name}: {defaults:?}");
        let mut given = required(name);
        for k in given.keys() {
            assert!(
                !defaults.contains_key(k),
                "{name}: required `{k}` has a default"
            );
        }
        let minimal = built_config(name, given.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        given.extend(defaults.clone());
        let explicit = built_config(name, given).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            minimal, explicit,
            "{name}: defaults differ from an empty build"
        );
    }
}

#[test]
fn d_state_comes_from_the_model_unless_given() {
    lrnnx::init();
    for name in ["LRU", "S5", "S5LTV", "Centaurus", "Mamba", "S7"] {
        let cfg = built_config(name, required(name)).unwrap();
        assert_eq!(cfg["d_state"], 4, "{name}: {cfg}");
        let mut kw = required(name);
        kw.insert("d_state".into(), json!(6));
        let cfg = built_config(name, kw).unwrap();
        assert_eq!(cfg["d_state"], 6, "{name}: {cfg}");
    }
    // RG-LRU has no state size, as in lrnnx: the kwarg is refused.
    let mut kw = Map::new();
    kw.insert("d_state".into(), json!(6));
    let e = built_config("RGLRU", kw).unwrap_err().to_string();
    assert!(
        e.contains("layer 3 (RGLRU)") && e.contains("d_state"),
        "{e}"
    );
}

#[test]
fn missing_required_and_unknown_kwargs_are_errors_naming_them() {
    lrnnx::init();
    for name in ["attn", "Centaurus", "S5"] {
        let e = built_config(name, Map::new()).unwrap_err().to_string();
        let key = required(name).keys().next().cloned().unwrap();
        assert!(
            e.contains(&format!("layer 3 ({name})")) && e.contains(&key),
            "{e}"
        );
    }
    for name in lrnnx::builtin_mixers() {
        let mut kw = required(name);
        kw.insert("no_such_kwarg".into(), json!(1));
        let e = built_config(name, kw).unwrap_err().to_string();
        assert!(
            e.contains(&format!("({name})")) && e.contains("no_such_kwarg"),
            "{name}: {e}"
        );
    }
}
