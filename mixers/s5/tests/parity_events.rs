//! The LTV S5 with event timesteps (`integration_timesteps`): the portable
//! path (the time-varying scan in candle ops, what CUDA runs) against the
//! fused CPU path in f64, forward, every gradient (the timesteps' too) and
//! prefill + steps with the timesteps split the same way; in f32 and with
//! bf16 activations on f32 master weights. The parity harness takes no
//! forward options, so this file spells the same comparison out.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_kernels::portable::with_portable;
use lrnnx_s5::{LtvDiscretization, S5Ltv, S5LtvConfig};
use lrnnx_testing::parity::Tolerance;
use lrnnx_testing::{max_rel, randn, uniform_vec};

/// bf16: as in `parity.rs` (four bf16 roundings on the way to the output,
/// 4 * 2^-8 = 2^-6; twice that for gradients). The timesteps are rounded to
/// bf16 once more on input (2^-8 relative in `tau`, hence in the exponent
/// `tau dt A`, which is at most a few units here), which fits in the same budget.
const BF16: Tolerance = Tolerance {
    output: 1.0 / 64.0,
    grad: 1.0 / 32.0,
};

fn build(
    h: usize,
    p: usize,
    d: LtvDiscretization,
    conj_sym: bool,
    store: &Arc<ParamStore>,
) -> S5Ltv {
    let cfg = S5LtvConfig {
        d_state: p,
        discretization: d,
        conj_sym,
        // Wide enough that tau * dt * A spans slow and fast decay.
        dt_min: 0.01,
        dt_max: 0.5,
        ..S5LtvConfig::default()
    };
    S5Ltv::new(h, cfg, &store.builder(), false).expect("builds")
}

/// Positive timesteps `(B, L)`, uniform in [0.1, 3).
fn timesteps(b: usize, l: usize, seed: u64) -> Tensor {
    let v = uniform_vec(b * l, seed, 0.1, 3.0);
    Tensor::from_vec(v, (b, l), &Device::Cpu).expect("timesteps")
}

fn fwd(tau: &Tensor) -> ForwardOpts {
    ForwardOpts {
        integration_timesteps: Some(tau.clone()),
        ..ForwardOpts::default()
    }
}

/// `sum(y * r)` with `r` cast to `y`'s dtype.
fn loss(y: &Tensor, r: &Tensor) -> Tensor {
    let r = r.to_dtype(y.dtype()).expect("weights");
    (y * r).and_then(|p| p.sum_all()).expect("loss")
}

/// The parity run with timesteps; `dtype` is the candidate's activation (and
/// timestep) dtype, its parameters are f32.
fn assert_event_parity(
    (b, l, h, p): (usize, usize, usize, usize),
    d: LtvDiscretization,
    conj_sym: bool,
    dtype: DType,
    tol: Tolerance,
) {
    let what = format!("S5 LTV {d:?} conj_sym {conj_sym} {dtype:?} (b {b}, l {l}, h {h}, p {p})");
    let ref_store = ParamStore::init(21, DType::F64, &Device::Cpu);
    let reference = build(h, p, d, conj_sym, &ref_store);
    let store = ParamStore::load(
        ref_store.tensors().into_iter().collect(),
        DType::F32,
        &Device::Cpu,
    );
    let cand = build(h, p, d, conj_sym, &store);
    let x = randn(&[b, l, h], 22, DType::F64);
    let tau = timesteps(b, l, 23);

    let (x_ref, tau_ref) = (
        Var::from_tensor(&x).expect("var"),
        Var::from_tensor(&tau).expect("var"),
    );
    let y_ref = reference
        .forward(x_ref.as_tensor(), &fwd(tau_ref.as_tensor()))
        .expect("reference forward");
    let r = randn(y_ref.dims(), 24, DType::F64);
    let g_ref = loss(&y_ref, &r).backward().expect("reference backward");

    let x_c = Var::from_tensor(&x.to_dtype(dtype).expect("cast")).expect("var");
    let tau_c = Var::from_tensor(&tau.to_dtype(dtype).expect("cast")).expect("var");
    let (y_c, g_c) = with_portable(|| {
        let y = cand
            .forward(x_c.as_tensor(), &fwd(tau_c.as_tensor()))
            .expect("candidate forward");
        let g = loss(&y.to_dtype(DType::F32).expect("widen"), &r)
            .backward()
            .expect("candidate backward");
        (y, g)
    });
    assert_eq!(y_c.dtype(), dtype, "{what}: output dtype");
    let err = max_rel(&y_c, &y_ref);
    assert!(err <= tol.output, "{what}: forward: {err:e}");
    let mut worst = (0.0f64, String::new());
    let mut pairs = vec![
        (
            "the input".to_string(),
            g_c.get(x_c.as_tensor()),
            g_ref.get(x_ref.as_tensor()),
        ),
        (
            "the timesteps".to_string(),
            g_c.get(tau_c.as_tensor()),
            g_ref.get(tau_ref.as_tensor()),
        ),
    ];
    let ref_vars = ref_store.vars();
    for (name, var) in store.vars() {
        let want = ref_vars.get(&name).and_then(|v| g_ref.get(v.as_tensor()));
        pairs.push((name, g_c.get(var.as_tensor()), want));
    }
    for (name, got, want) in pairs {
        let (got, want) = match (got, want) {
            (Some(g), Some(w)) => (g, w),
            (g, w) => panic!(
                "{what}: gradient of {name}: candidate {:?}, reference {:?}",
                g.is_some(),
                w.is_some()
            ),
        };
        let err = max_rel(got, want);
        assert!(err <= tol.grad, "{what}: gradient of {name}: {err:e}");
        if err >= worst.0 {
            worst = (err, name);
        }
    }

    // Prefill all but the last three positions, then step them, each with its timestep.
    let steps = 3.min(l);
    let (xd, taud) = (x_c.as_tensor().detach(), tau_c.as_tensor().detach());
    let decoded = with_portable(|| {
        let mut st = cand.init_state(b, l, dtype, &Device::Cpu).expect("state");
        let mut parts = Vec::new();
        if l > steps {
            let head = xd.narrow(1, 0, l - steps).expect("head");
            let opts = fwd(&taud.narrow(1, 0, l - steps).expect("head timesteps"));
            parts.push(cand.prefill(&head, &mut st, &opts).expect("prefill"));
        }
        for t in l - steps..l {
            let opts = StepOpts {
                integration_timesteps: Some(taud.narrow(1, t, 1).expect("timestep")),
            };
            let xt = xd.narrow(1, t, 1).expect("position");
            parts.push(cand.step(&xt, &mut st, &opts).expect("step"));
            assert_eq!(
                st.get("h").expect("h").dtype(),
                DType::F32,
                "{what}: state dtype"
            );
        }
        Tensor::cat(&parts, 1).expect("decoded")
    });
    let derr = max_rel(&decoded, &y_ref);
    assert!(derr <= tol.output, "{what}: prefill + steps: {derr:e}");
    println!(
        "{what}: forward {err:e}, grad {:e} ({}), decode {derr:e}",
        worst.0, worst.1
    );
}

#[test]
fn event_timesteps_portable_path_matches_the_fused_path() {
    use LtvDiscretization as D;
    for (d, conj_sym, h, p) in [
        (D::Zoh, false, 3, 2),
        (D::Bilinear, true, 5, 7),
        (D::Dirac, false, 4, 5),
        (D::Zoh, true, 6, 3),
    ] {
        for (b, l) in [(1, 1), (2, 7), (3, 13), (1, 33)] {
            assert_event_parity((b, l, h, p), d, conj_sym, DType::F32, Tolerance::F32);
        }
    }
}

#[test]
fn event_timesteps_in_bf16_match_the_f64_reference() {
    use LtvDiscretization as D;
    for (d, conj_sym, h, p) in [
        (D::Zoh, false, 3, 2),
        (D::Bilinear, true, 5, 7),
        (D::Dirac, false, 4, 5),
    ] {
        for (b, l) in [(1, 1), (2, 9), (1, 21)] {
            assert_event_parity((b, l, h, p), d, conj_sym, DType::BF16, BF16);
        }
    }
}
