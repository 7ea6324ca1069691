//! Decoding against the parallel forward: steps from a fresh state, prefills
//! followed by steps, and the same for a whole language model.

use candle_core::Tensor;
use lrnnx_framework::{ForwardOpts, LRNNLMHeadModel, LmForwardOpts, Mixer, MixerState, StepOpts};

use crate::{max_err, vec1};

/// One step of `m` at position `t` of `x (B, L, H)`: the input is `(B, H)` at
/// even `t` and `(B, 1, H)` at odd `t`, and the output must keep its rank.
/// Returns the output as `(B, 1, H)`.
fn step_at(m: &dyn Mixer, x: &Tensor, t: usize, st: &mut MixerState, what: &str) -> Tensor {
    let (b, _, h) = x.dims3().expect("x is (B, L, H)");
    let position = x.narrow(1, t, 1).expect("position");
    let xt = match t % 2 {
        0 => position.squeeze(1).expect("(B, H) step input"),
        _ => position,
    };
    let yt = m.step(&xt, st, &StepOpts::default()).expect("step");
    assert_eq!(yt.rank(), xt.rank(), "{what}: step keeps the input's rank");
    yt.reshape((b, 1, h)).expect("(B, 1, H)")
}

/// Checks that stepping `m` through every position of `x (B, L, H)` from a
/// fresh state made for `max_seqlen` positions (less than `L` makes a cache
/// grow) equals the parallel forward to `tol` (max abs error), alternating
/// `(B, H)` and `(B, 1, H)` inputs; the state must count the positions.
pub fn assert_steps_match_forward(
    m: &dyn Mixer,
    x: &Tensor,
    max_seqlen: usize,
    tol: f64,
    what: &str,
) {
    let (b, l, _) = x.dims3().expect("x is (B, L, H)");
    let want = vec1(&m.forward(x, &ForwardOpts::default()).expect("forward"));
    let mut st = m
        .init_state(b, max_seqlen, x.dtype(), x.device())
        .expect("state");
    let ys: Vec<Tensor> = (0..l).map(|t| step_at(m, x, t, &mut st, what)).collect();
    assert_eq!(st.seqlen_offset, l, "{what}: positions counted by steps");
    let err = max_err(&vec1(&Tensor::cat(&ys, 1).expect("cat")), &want);
    assert!(err < tol, "{what}: step vs forward: {err:e}");
}

/// Checks that prefills of `prefills` positions each, one after the other,
/// then steps for the rest of `x (B, L, H)` (alternating `(B, H)` and
/// `(B, 1, H)` inputs) equal the parallel forward to `tol` (max abs error);
/// the state must count the positions.
pub fn assert_prefills_then_steps_match_forward(
    m: &dyn Mixer,
    x: &Tensor,
    prefills: &[usize],
    tol: f64,
    what: &str,
) {
    let (b, l, _) = x.dims3().expect("x is (B, L, H)");
    let want = vec1(&m.forward(x, &ForwardOpts::default()).expect("forward"));
    let mut st = m.init_state(b, l, x.dtype(), x.device()).expect("state");
    let mut parts = Vec::new();
    let mut t = 0;
    for &n in prefills {
        let part = x.narrow(1, t, n).expect("prefill part");
        parts.push(
            m.prefill(&part, &mut st, &ForwardOpts::default())
                .expect("prefill"),
        );
        t += n;
    }
    assert_eq!(st.seqlen_offset, t, "{what}: positions counted by prefill");
    for t in t..l {
        parts.push(step_at(m, x, t, &mut st, what));
    }
    let err = max_err(&vec1(&Tensor::cat(&parts, 1).expect("cat")), &want);
    assert!(
        err < tol,
        "{what}: prefill {prefills:?} + steps vs forward: {err:e}"
    );
}

/// Checks a mixer's decoding against its parallel forward on `x (B, L, H)`:
/// every position stepped from a fresh state (alternating `(B, H)` and
/// `(B, 1, H)` inputs, whose rank the output must keep), then prefills of
/// `prefills` positions each followed by steps for the rest. Each must equal
/// the forward to `tol` (max abs error); the state must count the positions.
pub fn assert_decoding_matches_forward(
    m: &dyn Mixer,
    x: &Tensor,
    prefills: &[usize],
    tol: f64,
    what: &str,
) {
    let l = x.dims3().expect("x is (B, L, H)").1;
    assert_steps_match_forward(m, x, l, tol, what);
    assert_prefills_then_steps_match_forward(m, x, prefills, tol, what);
}

/// Checks a language model's decoding against its parallel forward on
/// `ids (B, L)`: a prefill of the first `prefill` tokens (none when 0) gives
/// the logits of its last position, then each step the logits of its
/// position, all to `tol` (max abs error).
pub fn assert_lm_decoding_matches_forward(
    model: &LRNNLMHeadModel,
    ids: &Tensor,
    prefill: usize,
    tol: f64,
) {
    let (b, l) = ids.dims2().expect("ids are (B, L)");
    let logits = model
        .forward(ids, &LmForwardOpts::default())
        .expect("forward");
    let at = |t: usize| vec1(&logits.narrow(1, t, 1).expect("position"));
    let mut st = model.init_state(b, l).expect("state");
    if prefill > 0 {
        let last = model
            .prefill(
                &ids.narrow(1, 0, prefill).expect("prompt"),
                &mut st,
                &LmForwardOpts::default(),
            )
            .expect("prefill");
        let err = max_err(&vec1(&last), &at(prefill - 1));
        assert!(err < tol, "prefill({prefill}) vs forward: {err:e}");
    }
    for t in prefill..l {
        let step = model
            .step(&ids.narrow(1, t, 1).expect("token"), &mut st, None)
            .expect("step");
        let err = max_err(&vec1(&step), &at(t));
        assert!(err < tol, "step at position {t} vs forward: {err:e}");
    }
}
