//! The lrnnx reference cases of Centaurus (neck, pw, dws) through the conformance runner.

use lrnnx_testing::{assert_case_passes, checks_step, golden_case};

fn case(name: &str) {
    // Link this crate so that its registration is seen by the runner.
    assert_eq!(lrnnx_centaurus::link(), ["Centaurus"]);
    // The runner's own tolerance, no tighter bound.
    let r = assert_case_passes(&golden_case(name), f64::INFINITY);
    assert!(checks_step(&r), "{name}: step_y compared");
}

#[test]
fn centaurus_neck() {
    case("centaurus_neck");
}

#[test]
fn centaurus_pw() {
    case("centaurus_pw");
}

#[test]
fn centaurus_dws() {
    case("centaurus_dws");
}

/// The same cases with the forward forced to each algorithm (the runner uses
/// `auto`, which is the scan at these lengths).
#[test]
fn golden_forward_by_scan_and_by_conv() {
    use candle_core::{DType, Device, Tensor};
    use lrnnx_centaurus::{Centaurus, CentaurusConfig, ForwardMode};
    use lrnnx_framework::ParamStore;
    use std::collections::HashMap;

    for name in ["centaurus_neck", "centaurus_pw", "centaurus_dws"] {
        let file =
            lrnnx_framework::io::read_safetensors_file(&golden_case(name), &Device::Cpu).unwrap();
        let mut kw: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&file.metadata["kwargs"]).unwrap();
        let h = kw.remove("d_model").unwrap().as_u64().unwrap() as usize;
        let mut params = HashMap::new();
        for (k, t) in &file.tensors {
            let Some(key) = k.strip_prefix("param.") else {
                continue;
            };
            match key.strip_suffix(".real") {
                Some(base) => {
                    let im = &file.tensors[&format!("param.{base}.imag")];
                    params.insert(base.to_string(), Tensor::stack(&[t, im], t.rank()).unwrap());
                }
                None if key.ends_with(".imag") => {}
                None => {
                    params.insert(key.to_string(), t.clone());
                }
            }
        }
        let store = ParamStore::load(params, DType::F32, &Device::Cpu);
        let mut cfg: CentaurusConfig = serde_json::from_value(kw.into()).unwrap();
        cfg.forward_mode = ForwardMode::Conv;
        let layer = Centaurus::new(h, cfg, &store.builder()).unwrap();
        assert!(store.unused_keys().is_empty());
        let x = &file.tensors["input.x"];
        let want = &file.tensors["output.y"];
        for how in [ForwardMode::Scan, ForwardMode::Conv] {
            let y = layer.forward_by(x, how).unwrap();
            let (abs, rel) = lrnnx_framework::conformance::compare(&y, want).unwrap();
            println!("{name} {how:?}: abs {abs:.3e} rel {rel:.3e}");
            assert!(rel < 1e-5, "{name} {how:?}: {rel}");
        }
    }
}
