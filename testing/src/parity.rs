//! Path and device parity: one mixer run through its fused CPU path in f64
//! (the reference) and through a candidate — the portable candle-ops path on
//! the CPU ([`Candidate::portable`]), or another device and dtype
//! ([`Candidate::on`]) — on the same parameters and random inputs. Forward,
//! the gradients of every parameter and of the input, and decoding (a
//! prefill of part of the sequence, then steps) must agree.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use lrnnx_framework::{ForwardOpts, Mixer, ParamBuilder, ParamStore, StepOpts};

use crate::{max_rel, randn};

/// How a mixer is built from a parameter builder.
pub type Build<'a> = &'a dyn Fn(&ParamBuilder) -> lrnnx_framework::Result<Box<dyn Mixer>>;

/// Where and how the candidate runs.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its device.
    pub device: Device,
    /// The dtype its parameters are stored in (the master weights).
    pub params: DType,
    /// The dtype of its inputs, which is the compute dtype.
    pub activations: DType,
    /// Whether to force the portable ops ([`lrnnx_kernels::portable::with_portable`]).
    pub portable: bool,
}

impl Candidate {
    /// The portable path on the CPU in f32.
    pub fn portable() -> Self {
        Self {
            device: Device::Cpu,
            params: DType::F32,
            activations: DType::F32,
            portable: true,
        }
    }

    /// The portable path on the CPU with bf16 activations on f32 master weights.
    pub fn portable_bf16() -> Self {
        Self {
            activations: DType::BF16,
            ..Self::portable()
        }
    }

    /// `device` with parameters in `params` and inputs in `activations`.
    pub fn on(device: &Device, params: DType, activations: DType) -> Self {
        Self {
            device: device.clone(),
            params,
            activations,
            portable: false,
        }
    }

    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.portable {
            lrnnx_kernels::portable::with_portable(f)
        } else {
            f()
        }
    }
}

/// Tolerances, relative to the reference's scale (`max |a-b| / max(1, max|b|)`).
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Forward and decoding outputs.
    pub output: f64,
    /// Gradients.
    pub grad: f64,
}

impl Tolerance {
    /// The f32 tolerance: `1e-4` everywhere.
    pub const F32: Self = Self {
        output: 1e-4,
        grad: 1e-4,
    };
}

/// What a parity run measured, for the test's log line.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Forward error.
    pub forward: f64,
    /// Largest gradient error and the parameter it was found at.
    pub grad: (f64, String),
    /// Decoding error (prefill + steps against the reference forward).
    pub decode: f64,
}

fn loss_weights(y: &Tensor, seed: u64) -> Tensor {
    randn(y.dims(), seed, DType::F64)
}

/// `sum(y * r)` in f64 on the CPU-side dtype of `y`.
fn weighted_sum(y: &Tensor, r: &Tensor) -> Tensor {
    let r = r
        .to_device(y.device())
        .and_then(|r| r.to_dtype(y.dtype()))
        .expect("loss weights");
    (y * r).and_then(|p| p.sum_all()).expect("loss")
}

/// The `(B, L)` of every f32 sweep: `L = 1` (decoding is a single step), odd
/// lengths, one past a power of 2.
pub const SHAPES: [(usize, usize); 4] = [(1, 1), (2, 7), (3, 13), (1, 33)];

/// The `(B, L)` of every bf16 sweep (shorter: bf16 errors grow with `L`).
pub const BF16_SHAPES: [(usize, usize); 3] = [(1, 1), (2, 9), (1, 21)];

/// [`assert_parity`] of `build` at width `h` and each `(B, L)` of `shapes`,
/// printing each report as `label (b B, l L, h H): report`.
pub fn sweep(
    build: Build,
    h: usize,
    shapes: &[(usize, usize)],
    cand: &Candidate,
    tol: Tolerance,
    decode_steps: usize,
    label: &str,
) {
    for &(b, l) in shapes {
        let what = format!("{label} (b {b}, l {l}, h {h})");
        let r = assert_parity(build, (b, l, h), cand, tol, decode_steps, &what);
        println!("{what}: {r:?}");
    }
}

/// Runs the parity check of `build` on inputs `(b, l, h)` and asserts every
/// error is within `tol`; `decode_steps` positions at the end are stepped
/// after a prefill of the rest (0 skips decoding, for mixers without it).
pub fn assert_parity(
    build: Build,
    (b, l, h): (usize, usize, usize),
    cand: &Candidate,
    tol: Tolerance,
    decode_steps: usize,
    what: &str,
) -> Report {
    let ref_store = ParamStore::init(11, DType::F64, &Device::Cpu);
    let reference = build(&ref_store.builder()).expect("reference builds");
    let tensors = ref_store.tensors().into_iter().collect();
    let store: Arc<ParamStore> = ParamStore::load(tensors, cand.params, &cand.device);
    let candidate = build(&store.builder()).expect("candidate builds");
    let x = randn(&[b, l, h], 12, DType::F64);
    let opts = ForwardOpts::default();

    // Forward and gradients.
    let x_ref = Var::from_tensor(&x).expect("var");
    let y_ref = reference
        .forward(x_ref.as_tensor(), &opts)
        .expect("reference forward");
    let r = loss_weights(&y_ref, 13);
    let g_ref = weighted_sum(&y_ref, &r)
        .backward()
        .expect("reference backward");
    let x_c = Var::from_tensor(
        &x.to_dtype(cand.activations)
            .and_then(|t| t.to_device(&cand.device))
            .expect("candidate input"),
    )
    .expect("var");
    let (y_c, g_c) = cand.run(|| {
        let y = candidate
            .forward(x_c.as_tensor(), &opts)
            .expect("candidate forward");
        assert_eq!(
            y.device().location(),
            cand.device.location(),
            "{what}: output left the device"
        );
        let g = weighted_sum(&y.to_dtype(DType::F32).expect("widen"), &r)
            .backward()
            .expect("candidate backward");
        (y, g)
    });
    let mut report = Report {
        forward: max_rel(&y_c, &y_ref),
        ..Report::default()
    };
    let mut compare_grad = |name: &str, got: Option<&Tensor>, want: Option<&Tensor>| {
        // A parameter out of the graph has no gradient, which is a zero one:
        // the other side must then hold exact zeros.
        let all_zero = |t: &Tensor| {
            t.abs()
                .and_then(|a| a.max_all())
                .and_then(|m| m.to_dtype(DType::F64))
                .and_then(|m| m.to_scalar::<f64>())
                .map(|m| m == 0.0)
                .unwrap_or(false)
        };
        let (got, want) = match (got, want) {
            (Some(g), Some(w)) => (g, w),
            (None, None) => return,
            (None, Some(z)) | (Some(z), None) if all_zero(z) => return,
            (g, w) => panic!(
                "{what}: gradient of {name}: candidate {}, reference {}",
                if g.is_some() { "has one" } else { "has none" },
                if w.is_some() { "has one" } else { "has none" }
            ),
        };
        let err = max_rel(got, want);
        if err > report.grad.0 || report.grad.1.is_empty() {
            report.grad = (err.max(report.grad.0), name.to_string());
        }
        assert!(
            err <= tol.grad,
            "{what}: gradient of {name}: {err:e} > {:e}",
            tol.grad
        );
    };
    compare_grad(
        "the input",
        g_c.get(x_c.as_tensor()),
        g_ref.get(x_ref.as_tensor()),
    );
    let ref_vars = ref_store.vars();
    for (name, var) in store.vars() {
        let want = ref_vars.get(&name).and_then(|v| g_ref.get(v.as_tensor()));
        compare_grad(&name, g_c.get(var.as_tensor()), want);
    }
    assert!(
        report.forward <= tol.output,
        "{what}: forward: {:e} > {:e}",
        report.forward,
        tol.output
    );

    // Decoding: a prefill of the first positions, then steps.
    if decode_steps > 0 {
        let steps = decode_steps.min(l);
        let x_c = x_c.as_tensor().detach();
        let parts = cand.run(|| {
            let mut state = candidate
                .init_state(b, l, cand.activations, &cand.device)
                .expect("state");
            let mut parts = Vec::new();
            if l > steps {
                let head = x_c.narrow(1, 0, l - steps).expect("head");
                parts.push(
                    candidate
                        .prefill(&head, &mut state, &opts)
                        .expect("prefill"),
                );
            }
            for t in l - steps..l {
                let xt = x_c.narrow(1, t, 1).expect("position");
                let yt = candidate
                    .step(&xt, &mut state, &StepOpts::default())
                    .expect("step");
                parts.push(yt.reshape((b, 1, ())).expect("step output"));
            }
            Tensor::cat(&parts, 1).expect("decoded")
        });
        report.decode = max_rel(&parts, &y_ref.detach());
        assert!(
            report.decode <= tol.output,
            "{what}: prefill + steps: {:e} > {:e}",
            report.decode,
            tol.output
        );
    }
    report
}
