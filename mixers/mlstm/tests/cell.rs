//! The mLSTM cell's three forms against a plain-loop f64 reference, against
//! each other, with initial states, and their gradients.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{max_abs, max_err, randn, vec1, CellRef};
use lrnnx_mlstm::cell::{self, CellState};
use lrnnx_testing::GradientCheck;

const EPS: f64 = 1e-6;

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
}

/// Random inputs; `i_mean` moves the input gates (very negative: the
/// `exp(-m)` floor of the denominator is active), `f_mean` the forget gates.
fn inputs(
    dims: (usize, usize, usize, usize, usize),
    seed: u64,
    i_mean: f64,
    f_mean: f64,
    dt: DType,
) -> Inputs {
    let (b, nh, s, dk, dv) = dims;
    Inputs {
        q: randn(&[b, nh, s, dk], seed, 0.0, 1.0, dt),
        k: randn(&[b, nh, s, dk], seed + 1, 0.0, 1.0, dt),
        v: randn(&[b, nh, s, dv], seed + 2, 0.0, 1.0, dt),
        i: randn(&[b, nh, s], seed + 3, i_mean, 2.0, dt),
        f: randn(&[b, nh, s], seed + 4, f_mean, 2.0, dt),
    }
}

fn reference(x: &Inputs) -> CellRef {
    CellRef::from(&x.q, &x.k, &x.v, &x.i, &x.f)
}

fn rel(ours: &Tensor, want: &[f64]) -> f64 {
    max_err(&vec1(ours), want) / max_abs(want).max(1.0)
}

fn check_state(st: &CellState, want: &common::RefOut, tol: f64, what: &str) {
    for (name, t, w) in [
        ("c", &st.c, &want.c),
        ("n", &st.n, &want.n),
        ("m", &st.m, &want.m),
    ] {
        let e = rel(t, w);
        assert!(e < tol, "{what}: last {name} off by {e}");
    }
}

const SHAPES: [(usize, usize, usize, usize, usize); 4] = [
    (1, 1, 1, 3, 2),
    (2, 3, 37, 5, 4),
    (1, 2, 64, 8, 8),
    (3, 1, 17, 4, 7),
];

#[test]
fn all_forms_match_the_reference_at_odd_shapes() {
    for (n, dims) in SHAPES.into_iter().enumerate() {
        for (i_mean, f_mean) in [(0.0, 2.0), (-6.0, 0.0), (4.0, -1.0)] {
            let x = inputs(dims, 10 * n as u64, i_mean, f_mean, DType::F64);
            let r = reference(&x);
            let want = r.recurrent(None, EPS);
            let what = format!("{dims:?} i~{i_mean} f~{f_mean}");
            let (h, st) =
                cell::recurrent_sequence(&x.q, &x.k, &x.v, &x.i, &x.f, None, EPS).unwrap();
            assert!(
                rel(&h, &want.h) < 1e-12,
                "recurrent {what}: {}",
                rel(&h, &want.h)
            );
            check_state(&st, &want, 1e-12, &format!("recurrent {what}"));
            for chunk in [1, 4, 8, 16, 64, 100] {
                let (h, st) =
                    cell::chunkwise(&x.q, &x.k, &x.v, &x.i, &x.f, None, chunk, EPS).unwrap();
                let e = rel(&h, &want.h);
                assert!(e < 1e-10, "chunkwise {chunk} {what}: {e}");
                check_state(&st, &want, 1e-10, &format!("chunkwise {chunk} {what}"));
            }
            let par = r.parallel(EPS);
            if i_mean < 0.0 {
                // h = N / (max(|D|, 1) + eps exp(m)): the two stabilizers differ
                // by eps-sized amounts, which the tolerance below resolves.
                let gap = max_err(&par, &want.h) / max_abs(&want.h).max(1.0);
                assert!(
                    gap > 1e-9,
                    "{what}: parallel and recurrent coincide ({gap:e})"
                );
            }
            let (h, st) = cell::parallel(&x.q, &x.k, &x.v, &x.i, &x.f, None, EPS).unwrap();
            let e = rel(&h, &par);
            assert!(e < 1e-12, "parallel {what}: {e}");
            check_state(&st, &want, 1e-10, &format!("parallel {what}"));
        }
    }
}

#[test]
fn f32_forms_agree() {
    let x = inputs((2, 2, 50, 8, 6), 3, 0.0, 2.0, DType::F32);
    let want = reference(&x).recurrent(None, EPS);
    let (h, _) = cell::chunkwise(&x.q, &x.k, &x.v, &x.i, &x.f, None, 16, EPS).unwrap();
    assert!(rel(&h, &want.h) < 1e-5, "{}", rel(&h, &want.h));
    let (h, _) = cell::recurrent_sequence(&x.q, &x.k, &x.v, &x.i, &x.f, None, EPS).unwrap();
    assert!(rel(&h, &want.h) < 1e-5, "{}", rel(&h, &want.h));
}

fn random_state(dims: (usize, usize, usize, usize, usize), seed: u64) -> CellState {
    let (b, nh, _, dk, dv) = dims;
    CellState {
        c: randn(&[b, nh, dk, dv], seed, 0.0, 1.0, DType::F64),
        n: randn(&[b, nh, dk], seed + 1, 0.0, 1.0, DType::F64),
        m: randn(&[b, nh], seed + 2, 0.0, 1.5, DType::F64),
    }
}

#[test]
fn initial_states_are_honoured_by_every_form() {
    let dims = (2, 3, 23, 5, 4);
    let x = inputs(dims, 7, 0.0, 1.0, DType::F64);
    let init = random_state(dims, 40);
    let (c0, n0, m0) = (vec1(&init.c), vec1(&init.n), vec1(&init.m));
    let want = reference(&x).recurrent(Some((&c0, &n0, &m0)), EPS);
    let (h, st) = cell::recurrent_sequence(&x.q, &x.k, &x.v, &x.i, &x.f, Some(&init), EPS).unwrap();
    assert!(rel(&h, &want.h) < 1e-12);
    check_state(&st, &want, 1e-12, "recurrent");
    for chunk in [1, 5, 8, 23, 30] {
        let (h, st) =
            cell::chunkwise(&x.q, &x.k, &x.v, &x.i, &x.f, Some(&init), chunk, EPS).unwrap();
        assert!(
            rel(&h, &want.h) < 1e-10,
            "chunk {chunk}: {}",
            rel(&h, &want.h)
        );
        check_state(&st, &want, 1e-10, &format!("chunk {chunk}"));
    }
    let (h, st) = cell::parallel(&x.q, &x.k, &x.v, &x.i, &x.f, Some(&init), EPS).unwrap();
    assert!(rel(&h, &want.h) < 1e-10);
    check_state(&st, &want, 1e-10, "parallel");
}

#[test]
fn a_sequence_split_in_two_continues_from_the_last_state() {
    let dims = (2, 2, 30, 4, 3);
    let x = inputs(dims, 2, 0.0, 1.5, DType::F64);
    let (h, last) = cell::chunkwise(&x.q, &x.k, &x.v, &x.i, &x.f, None, 8, EPS).unwrap();
    let part = |t: &Tensor, a: usize, n: usize| t.narrow(2, a, n).unwrap();
    let (h1, mid) = cell::chunkwise(
        &part(&x.q, 0, 11),
        &part(&x.k, 0, 11),
        &part(&x.v, 0, 11),
        &part(&x.i, 0, 11),
        &part(&x.f, 0, 11),
        None,
        8,
        EPS,
    )
    .unwrap();
    let (h2, end) = cell::chunkwise(
        &part(&x.q, 11, 19),
        &part(&x.k, 11, 19),
        &part(&x.v, 11, 19),
        &part(&x.i, 11, 19),
        &part(&x.f, 11, 19),
        Some(&mid),
        8,
        EPS,
    )
    .unwrap();
    let joined = Tensor::cat(&[h1, h2], 2).unwrap();
    assert!(max_err(&vec1(&joined), &vec1(&h)) < 1e-12);
    assert!(max_err(&vec1(&end.c), &vec1(&last.c)) < 1e-12);
    assert!(max_err(&vec1(&end.m), &vec1(&last.m)) < 1e-12);
    // Steps from the middle state give the same second half.
    let mut st = mid;
    for t in 11..30 {
        let at = |z: &Tensor| z.narrow(2, t, 1).unwrap().squeeze(2).unwrap();
        let (ht, next) = cell::step(
            &at(&x.q),
            &at(&x.k),
            &at(&x.v),
            &at(&x.i),
            &at(&x.f),
            &st,
            EPS,
        )
        .unwrap();
        let want = h.narrow(2, t, 1).unwrap().squeeze(2).unwrap();
        assert!(max_err(&vec1(&ht), &vec1(&want)) < 1e-10, "step {t}");
        st = next;
    }
}

#[test]
fn empty_sequences_return_the_initial_state() {
    let x = inputs((2, 1, 0, 3, 3), 1, 0.0, 0.0, DType::F32);
    let (h, st) = cell::chunkwise(&x.q, &x.k, &x.v, &x.i, &x.f, None, 8, EPS).unwrap();
    assert_eq!(h.dims(), &[2, 1, 0, 3]);
    assert_eq!(st.c.dims(), &[2, 1, 3, 3]);
}

#[test]
fn bad_shapes_are_named() {
    let x = inputs((2, 2, 5, 4, 3), 1, 0.0, 0.0, DType::F32);
    let e = cell::chunkwise(&x.q, &x.k, &x.v, &x.i, &x.q, None, 4, EPS)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fgate_preact") && e.contains("(2, 2, 5)") && e.contains("[2, 2, 5, 4]"),
        "{e}"
    );
    let e = cell::parallel(&x.q, &x.v, &x.v, &x.i, &x.f, None, EPS)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mLSTM cell k") && e.contains("[2, 2, 5, 3]"),
        "{e}"
    );
    let e = cell::chunkwise(&x.q, &x.k, &x.v, &x.i, &x.f, None, 0, EPS)
        .unwrap_err()
        .to_string();
    assert!(e.contains("chunk_size"), "{e}");
    let bad = CellState::zeros(2, 2, 3, 3, DType::F32, &Device::Cpu).unwrap();
    let e = cell::recurrent_sequence(&x.q, &x.k, &x.v, &x.i, &x.f, Some(&bad), EPS)
        .unwrap_err()
        .to_string();
    assert!(e.contains("state `c`") && e.contains("[2, 2, 4, 3]"), "{e}");
}

/// Central differences of `sum(h * w)` (plus the last state) against autograd, f64.
fn check_gradients(form: &str) {
    let dims = (1, 2, 13, 3, 2);
    let x = inputs(dims, 5, 0.0, 1.0, DType::F64);
    let init = random_state(dims, 9);
    let vars: Vec<(String, Var)> = [
        ("q", &x.q),
        ("k", &x.k),
        ("v", &x.v),
        ("igate", &x.i),
        ("fgate", &x.f),
        ("c0", &init.c),
        ("n0", &init.n),
    ]
    .into_iter()
    .map(|(name, t)| (name.to_string(), Var::from_tensor(t).unwrap()))
    .collect();
    let w = randn(&[1, 2, 13, 2], 77, 0.0, 1.0, DType::F64);
    let wc = randn(&[1, 2, 3, 2], 78, 0.0, 1.0, DType::F64);
    let loss = || -> Tensor {
        let t = |j: usize| vars[j].1.as_tensor();
        let st = CellState {
            c: t(5).clone(),
            n: t(6).clone(),
            m: init.m.clone(),
        };
        let (h, last) = match form {
            "chunkwise" => cell::chunkwise(t(0), t(1), t(2), t(3), t(4), Some(&st), 4, EPS),
            "parallel" => cell::parallel(t(0), t(1), t(2), t(3), t(4), Some(&st), EPS),
            "parallel-no-state" => cell::parallel(t(0), t(1), t(2), t(3), t(4), None, EPS),
            _ => cell::recurrent_sequence(t(0), t(1), t(2), t(3), t(4), Some(&st), EPS),
        }
        .unwrap();
        let a = (h * &w).unwrap().sum_all().unwrap();
        let b = (last.c * &wc).unwrap().sum_all().unwrap();
        (a + b).unwrap()
    };
    // Without an initial state, c0 and n0 get no gradient: it must be zero.
    let check = GradientCheck {
        what: form,
        indices: &|_, len| vec![0, len / 3, len / 2, len - 1],
        may_lack_gradient: &|_| true,
        ..GradientCheck::new(1e-6)
    };
    check.assert(&vars, loss);
}

#[test]
fn chunkwise_gradients_match_finite_differences() {
    check_gradients("chunkwise");
}

#[test]
fn parallel_gradients_match_finite_differences() {
    check_gradients("parallel");
    check_gradients("parallel-no-state");
}

#[test]
fn recurrent_gradients_match_finite_differences() {
    check_gradients("recurrent");
}
