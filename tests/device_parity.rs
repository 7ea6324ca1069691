//! Every built-in mixer on a CUDA GPU against the CPU: forward, the gradients
//! of every parameter and of the input, prefill + steps, in f32 (to 1e-4
//! relative) and with bf16 activations; and a language model holding every
//! mixer trained 20 steps on both devices (the same loss curve to 1e-3).
//!
//! Built with `--features cuda` and run on a GPU machine; elsewhere each test
//! says it is skipped and why. The same harness runs the portable paths on
//! the CPU in each mixer crate's tests (CI).

use candle_core::{DType, Device};
use lrnnx::train::{TokenBatches, TrainConfig, Trainer};
use lrnnx::{BuildArgs, LRNNLMHeadModel, LmConfig, ParamBuilder, Registry};
use lrnnx_testing::parity::{assert_parity, Candidate, Tolerance};

/// `(name, kwargs, d_model, d_state)`: odd widths where the mixer allows them.
const CASES: &[(&str, &str, usize, usize)] = &[
    ("LRU", "{}", 24, 13),
    ("S4", "{}", 20, 16),
    ("S4D", "{}", 20, 16),
    ("S5", r#"{"discretization": "zoh"}"#, 20, 16),
    ("S5LTV", "{}", 20, 16),
    ("Centaurus", r#"{"sub_state_dim": 2}"#, 20, 16),
    ("Mamba", "{}", 20, 16),
    ("RGLRU", "{}", 24, 16),
    ("S7", "{}", 20, 16),
    (
        "attn",
        r#"{"num_heads": 4, "causal": true, "rotary_emb_dim": 4}"#,
        32,
        16,
    ),
    ("mLSTM", "{}", 32, 16),
];

/// The first CUDA GPU, or why there is none.
fn gpu() -> Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("built without `--features cuda`".into());
    }
    Device::new_cuda(0).map_err(|e| format!("no CUDA device: {e}"))
}

fn skip(test: &str, why: &str) {
    println!(
        "SKIPPED {test}: {why} (build with `--features cuda` and run on a GPU machine, see README)"
    );
}

fn build(
    name: &'static str,
    kwargs: &'static str,
    d_model: usize,
    d_state: usize,
) -> impl Fn(&ParamBuilder) -> lrnnx::Result<Box<dyn lrnnx::Mixer>> {
    move |pb| {
        let args = BuildArgs {
            d_model,
            d_state,
            layer_idx: 0,
            kwargs: serde_json::from_str(kwargs).expect("kwargs are JSON"),
            params: pb.clone(),
        };
        Registry::build(name, &args)
    }
}

/// Runs every case, printing each result, and fails at the end naming every
/// case that failed (so one run on the GPU machine shows them all).
fn run_all(dev: &Device, activations: DType, tol: Tolerance) {
    lrnnx::init();
    let mut failed = Vec::new();
    for &(name, kwargs, h, n) in CASES {
        for (b, l) in [(1, 1), (2, 37), (3, 130)] {
            let what = format!("{name} {activations:?} B={b} L={l} H={h}");
            let cand = Candidate::on(dev, DType::F32, activations);
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                assert_parity(&build(name, kwargs, h, n), (b, l, h), &cand, tol, 6, &what)
            }));
            match run {
                Ok(r) => println!(
                    "{what}: forward {:.1e}, worst gradient {:.1e} ({}), prefill+steps {:.1e}",
                    r.forward, r.grad.0, r.grad.1, r.decode
                ),
                Err(_) => failed.push(what),
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:#?}");
}

#[test]
fn every_mixer_on_the_gpu_matches_the_cpu_in_f32() {
    match gpu() {
        Ok(dev) => run_all(&dev, DType::F32, Tolerance::F32),
        Err(why) => skip("f32 parity", &why),
    }
}

/// bf16 rounds to 8 significant bits (relative error up to 2^-9 per
/// rounding). A layer's output carries the rounding of its input, of each
/// weight it reads and of each intermediate activation on the way: about ten
/// roundings, each propagating with a gain of order one relative to the
/// output's scale, so ~10 x 2^-9 = 2e-2; the backward pass adds as many again.
const BF16: Tolerance = Tolerance {
    output: 2e-2,
    grad: 4e-2,
};

#[test]
fn every_mixer_on_the_gpu_runs_bf16_activations() {
    match gpu() {
        Ok(dev) => run_all(&dev, DType::BF16, BF16),
        Err(why) => skip("bf16 parity", &why),
    }
}

/// Losses of 20 training steps of a small LM holding every mixer, on `dev`.
fn loss_curve(dev: &Device) -> Vec<f64> {
    lrnnx::init();
    let names: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    let mut cfg = LmConfig::new(32, 16, 64, &names);
    // Each mixer's kwargs as its parity case gives them.
    for &(name, kwargs, _, _) in CASES {
        let kw: serde_json::Value = serde_json::from_str(kwargs).expect("kwargs are JSON");
        cfg.mixer_kwargs.insert(name.to_string(), kw);
    }
    let model = LRNNLMHeadModel::init(cfg, 7, dev).expect("model");
    let ids: Vec<u32> = (0..4000u32).map(|i| (i * 7 + i / 13) % 64).collect();
    let data = TokenBatches::new(ids, 24, 0.1, 3).expect("batches");
    let tc = TrainConfig {
        steps: 20,
        batch_size: 4,
        seq_len: 24,
        warmup: 2,
        eval_every: 100,
        save_every: 100,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(model, data, tc).expect("trainer");
    (0..20).map(|_| t.step().expect("step")).collect()
}

#[test]
fn an_lm_of_every_mixer_trains_the_same_on_gpu_and_cpu() {
    let dev = match gpu() {
        Ok(d) => d,
        Err(why) => return skip("LM training parity", &why),
    };
    let cpu = loss_curve(&Device::Cpu);
    let gpu = loss_curve(&dev);
    for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        let rel = (c - g).abs() / c.abs();
        println!("step {i:>2}: CPU {c:.6}  GPU {g:.6}  rel {rel:.1e}");
        assert!(rel < 1e-3, "step {i}: CPU {c} vs GPU {g}");
    }
    assert!(cpu[19] < cpu[0], "the loss fell: {} -> {}", cpu[0], cpu[19]);
}

#[test]
fn an_lm_of_every_mixer_trains_the_same_through_the_portable_ops() {
    let fused = loss_curve(&Device::Cpu);
    let portable = lrnnx_kernels::portable::with_portable(|| loss_curve(&Device::Cpu));
    for (i, (f, p)) in fused.iter().zip(&portable).enumerate() {
        let rel = (f - p).abs() / f.abs();
        assert!(rel < 1e-3, "step {i}: fused {f} vs portable {p}");
    }
    assert!(
        fused[19] < fused[0],
        "the loss fell: {} -> {}",
        fused[0],
        fused[19]
    );
}
