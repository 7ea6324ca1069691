//! Sizes no plausible model has are refused with the figure, before any
//! allocation (a wrong guess here would abort the test binary, not fail it).

use candle_core::Device;
use lrnnx_framework::{LRNNLMHeadModel, LmConfig};

fn refused(cfg: LmConfig) -> String {
    LRNNLMHeadModel::init(cfg, 0, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("built a model that should have been refused"))
}

#[test]
fn each_size_beyond_its_bound_names_itself() {
    for (what, f) in [
        (
            "d_model",
            (|c: &mut LmConfig| c.d_model = 1_000_000_000_000) as fn(&mut LmConfig),
        ),
        ("d_state", |c| c.d_state = 1 << 40),
        ("vocab_size", |c| c.vocab_size = usize::MAX),
        ("pad_vocab_size_multiple", |c| {
            c.pad_vocab_size_multiple = usize::MAX
        }),
        ("d_intermediate", |c| c.d_intermediate = 1 << 40),
    ] {
        let mut c = LmConfig::new(8, 4, 16, &["Anything"]);
        f(&mut c);
        let e = refused(c);
        assert!(e.contains(what) && e.contains("more than"), "{what}: {e}");
    }
}

#[test]
fn a_parameter_budget_overrun_is_refused_before_allocating() {
    // 2^31 x 2^16 = 2^47 embedding elements: every size within its bound.
    let c = LmConfig::new(1 << 16, 4, 1 << 31, &["Anything"]);
    let e = refused(c);
    assert!(
        e.contains("backbone.embedding.weight")
            && e.contains("140737488355328")
            && e.contains("LRNNX_MAX_PARAMS"),
        "{e}"
    );
}
