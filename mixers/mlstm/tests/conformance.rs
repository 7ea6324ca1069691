//! The mLSTM cell against mlstm_kernels 2.0.6 (tests/data/lrnnx/mlstm_cell_S32.safetensors):
//! parallel, chunkwise (chunk 8) and recurrent outputs and the last states.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use lrnnx_framework::conformance::{compare, TOLERANCE};
use lrnnx_framework::io::read_safetensors_file;
use lrnnx_mlstm::cell;

fn case() -> PathBuf {
    lrnnx_testing::golden_case("mlstm_cell_S32")
}

#[test]
fn cell_matches_mlstm_kernels() {
    let file = read_safetensors_file(&case(), &Device::Cpu).unwrap();
    assert_eq!(
        file.metadata.get("mixer").map(String::as_str),
        Some("mLSTM-cell")
    );
    let kwargs: serde_json::Value = serde_json::from_str(&file.metadata["kwargs"]).unwrap();
    let eps = kwargs["eps"].as_f64().unwrap();
    let t = |k: &str| -> &Tensor { &file.tensors[k] };
    let (q, k, v) = (t("input.q"), t("input.k"), t("input.v"));
    let (i, f) = (t("input.igate_preact"), t("input.fgate_preact"));
    let mut report = Vec::new();
    let mut check = |what: &str, ours: &Tensor, key: &str| {
        let (abs, rel) = compare(ours, t(key)).unwrap();
        report.push(format!("{what:<22} abs {abs:.3e} rel {rel:.3e}"));
        assert!(
            rel <= TOLERANCE,
            "{what} vs {key}: abs {abs:e}, rel {rel:e}"
        );
    };
    let (h, st) = cell::parallel(q, k, v, i, f, None, eps).unwrap();
    check("parallel h", &h, "output.h_parallel");
    check("parallel c_last", &st.c, "output.c_last");
    check("parallel n_last", &st.n, "output.n_last");
    check("parallel m_last", &st.m, "output.m_last");
    let (h, st) = cell::chunkwise(q, k, v, i, f, None, 8, eps).unwrap();
    check("chunkwise(8) h", &h, "output.h_chunkwise");
    check("chunkwise(8) c_last", &st.c, "output.c_last");
    check("chunkwise(8) n_last", &st.n, "output.n_last");
    check("chunkwise(8) m_last", &st.m, "output.m_last");
    for chunk in [5, 32, 64] {
        let (h, _) = cell::chunkwise(q, k, v, i, f, None, chunk, eps).unwrap();
        check(&format!("chunkwise({chunk}) h"), &h, "output.h_recurrent");
    }
    let (h, st) = cell::recurrent_sequence(q, k, v, i, f, None, eps).unwrap();
    check("recurrent h", &h, "output.h_recurrent");
    check("recurrent c_last", &st.c, "output.c_last");
    check("recurrent n_last", &st.n, "output.n_last");
    check("recurrent m_last", &st.m, "output.m_last");
    println!("{}", report.join("\n"));
}

/// What the repo's runner would do with a registered case hook: every output within tolerance.
#[test]
fn cell_case_hook_passes() {
    let file = read_safetensors_file(&case(), &Device::Cpu).unwrap();
    let kwargs: serde_json::Value = serde_json::from_str(&file.metadata["kwargs"]).unwrap();
    let outs =
        lrnnx_mlstm::conformance::cell_case(&file.tensors, kwargs.as_object().unwrap()).unwrap();
    assert_eq!(outs.len(), 9);
    for (what, ours, reference) in outs {
        let (abs, rel) = compare(&ours, &reference).unwrap();
        assert!(rel <= TOLERANCE, "{what}: abs {abs:e}, rel {rel:e}");
    }
}
