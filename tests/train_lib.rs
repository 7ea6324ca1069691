//! Training as a library: `Trainer::fit` and its callbacks, gradient
//! accumulation equal to one step over the concatenated batch, the
//! `train_tiny` example.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lrnnx::train::{
    StepReport, TokenBatches, TrainConfig, Trainer, TrainerCallback, TrainerRecord,
    MAX_GRAD_ACCUM_STEPS,
};
use lrnnx::{LRNNLMHeadModel, LmConfig, Precision};

#[allow(dead_code)]
#[path = "../examples/train_tiny.rs"]
mod train_tiny;

/// A small model of two mixers (an LTI and an LTV one) in f64 or f32.
fn model(dtype: DType) -> LRNNLMHeadModel {
    lrnnx::init();
    let mut cfg = LmConfig::new(16, 4, 64, &["LRU", "Mamba"]);
    cfg.d_intermediate = 16;
    LRNNLMHeadModel::init_with(cfg, 3, &Device::Cpu, Precision::pure(dtype)).unwrap()
}

fn data(seq_len: usize) -> TokenBatches {
    let ids: Vec<u32> = (0..3000u32).map(|i| (i * 7 + i / 11) % 64).collect();
    TokenBatches::new(ids, seq_len, 0.1, 5).unwrap()
}

fn config(grad_accum_steps: usize) -> TrainConfig {
    TrainConfig {
        steps: 6,
        batch_size: 2,
        seq_len: 12,
        lr: 1e-2,
        warmup: 0,
        eval_every: 3,
        eval_batches: 1,
        save_every: 4,
        grad_accum_steps,
        ..TrainConfig::default()
    }
}

/// `n` micro-batches of `b` sequences of `l` tokens, all different.
fn micro_batches(n: usize, b: usize, l: usize, salt: usize) -> Vec<(Tensor, Tensor)> {
    (0..n)
        .map(|k| {
            let x = common::lm::token_ids(b, l + 1, 5 + 2 * k, 3 * k + salt, 64);
            (
                x.narrow(1, 0, l).unwrap().contiguous().unwrap(),
                x.narrow(1, 1, l).unwrap().contiguous().unwrap(),
            )
        })
        .collect()
}

fn concatenated(batches: &[(Tensor, Tensor)]) -> Vec<(Tensor, Tensor)> {
    let xs: Vec<&Tensor> = batches.iter().map(|(x, _)| x).collect();
    let ys: Vec<&Tensor> = batches.iter().map(|(_, y)| y).collect();
    vec![(Tensor::cat(&xs, 0).unwrap(), Tensor::cat(&ys, 0).unwrap())]
}

/// The largest relative difference between the two models' parameters.
fn param_diff(a: &LRNNLMHeadModel, b: &LRNNLMHeadModel) -> f64 {
    let (va, vb) = (a.store().vars(), b.store().vars());
    assert_eq!(va.len(), vb.len());
    va.iter()
        .map(|(k, v)| common::lm::rel_err(v.as_tensor(), vb[k].as_tensor()))
        .fold(0.0, f64::max)
}

#[test]
fn accumulating_micro_batches_equals_one_step_over_their_concatenation() {
    let n = 3;
    let mut acc = Trainer::new(model(DType::F64), data(12), config(n)).unwrap();
    let mut one = Trainer::new(model(DType::F64), data(12), config(1)).unwrap();
    assert_eq!(param_diff(acc.model(), one.model()), 0.0, "same init");

    // The accumulated gradient is the full batch's, parameter by parameter.
    let micro = micro_batches(n, 2, 12, 0);
    let (l_acc, g_acc) = acc.gradients(&micro).unwrap();
    let (l_one, g_one) = one.gradients(&concatenated(&micro)).unwrap();
    assert!(
        (l_acc - l_one).abs() <= 1e-12 * l_one.abs(),
        "{l_acc} vs {l_one}"
    );
    let (_, g_last) = acc.gradients(&micro[n - 1..]).unwrap();
    let mut last_differs = 0.0f64;
    for (name, var) in acc.model().store().vars() {
        let a = g_acc.get(var.as_tensor());
        let b = g_one.get(one.model().store().vars()[&name].as_tensor());
        // lrnnx keeps Mamba's dtA_proj.weight but never uses it: no gradient either way.
        let (Some(a), Some(b)) = (a, b) else {
            assert!(
                a.is_none() && b.is_none() && name.ends_with("dtA_proj.weight"),
                "{name}"
            );
            continue;
        };
        let e = common::lm::rel_err(a, b);
        assert!(e <= 1e-12, "{name}: accumulated gradient off by {e}");
        last_differs =
            last_differs.max(common::lm::rel_err(g_last.get(var.as_tensor()).unwrap(), b));
    }
    // (The check can fail: one micro-batch's gradient is not the batch's.)
    assert!(last_differs > 1e-3, "{last_differs}");

    // Steps (clipped, with weight decay and the schedule) stay equal.
    for s in 0..3 {
        let micro = micro_batches(n, 2, 12, 10 + s);
        let la = acc.step_on(&micro).unwrap();
        let lo = one.step_on(&concatenated(&micro)).unwrap();
        assert!(
            (la - lo).abs() <= 1e-12 * lo.abs(),
            "step {s}: {la} vs {lo}"
        );
        let d = param_diff(acc.model(), one.model());
        assert!(d <= 1e-10, "step {s}: parameters differ by {d}");
    }
    assert_eq!(acc.tokens_per_step(), n * 2 * 12);
}

#[test]
fn grad_accum_steps_is_validated_and_old_records_default_to_one() {
    for bad in [0, MAX_GRAD_ACCUM_STEPS + 1] {
        let e = config(bad).validate(64).unwrap_err().to_string();
        common::assert_mentions(&e, &["grad_accum_steps", &bad.to_string(), "between 1 and"]);
    }
    config(MAX_GRAD_ACCUM_STEPS).validate(64).unwrap();
    let mut v = serde_json::to_value(TrainerRecord {
        step: 2,
        config: config(4),
        val_loss: None,
        checkpoint_id: "x".into(),
        info: Default::default(),
    })
    .unwrap();
    v["config"]
        .as_object_mut()
        .unwrap()
        .remove("grad_accum_steps");
    let r: TrainerRecord = serde_json::from_value(v).unwrap();
    assert_eq!(r.config.grad_accum_steps, 1);
    let e = Trainer::new(model(DType::F32), data(12), config(1))
        .unwrap()
        .step_on(&[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least one micro-batch"), "{e}");
}

#[derive(Default)]
struct Recorder {
    steps: Vec<StepReport>,
    evals: Vec<(usize, f64)>,
    saves: Vec<(usize, PathBuf)>,
}

impl TrainerCallback for Recorder {
    fn on_step(&mut self, r: &StepReport) {
        self.steps.push(*r);
    }
    fn on_eval(&mut self, step: usize, val_loss: f64) {
        self.evals.push((step, val_loss));
    }
    fn on_save(&mut self, step: usize, dir: &Path) {
        // The set is committed by the time the callback hears of it.
        lrnnx::train::verify_checkpoint(dir).unwrap();
        self.saves.push((step, dir.to_path_buf()));
    }
}

#[test]
fn fit_steps_evaluates_saves_and_reports_to_callbacks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = config(2);
    let mut t = Trainer::new(model(DType::F32), data(12), cfg.clone())
        .unwrap()
        .with_checkpoints(lrnnx::train::SaveTo::new(&out));
    let mut rec = Recorder::default();
    let mut also = Recorder::default();
    let summary = t.fit(&mut [&mut rec, &mut also]).unwrap();
    assert_eq!(summary.steps_run, 6);
    let steps: Vec<usize> = rec.steps.iter().map(|r| r.step).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    assert_eq!(also.steps.len(), 6, "every callback is called");
    assert!(rec
        .steps
        .iter()
        .all(|r| r.loss.is_finite() && r.tokens_per_s > 0.0));
    // The schedule's learning rate of each step: no warm-up, cosine to min_lr.
    assert_eq!(rec.steps[0].lr, cfg.lr);
    assert!(rec.steps[5].lr < rec.steps[1].lr);
    assert_eq!(
        rec.evals.iter().map(|e| e.0).collect::<Vec<_>>(),
        [3, 6],
        "eval_every 3"
    );
    assert_eq!(summary.val_loss, rec.evals[1].1);
    assert_eq!(summary.last_loss, Some(rec.steps[5].loss));
    assert_eq!(
        rec.saves.iter().map(|s| s.0).collect::<Vec<_>>(),
        [4, 6],
        "save_every 4, and the end"
    );
    let record: TrainerRecord =
        serde_json::from_str(&std::fs::read_to_string(out.join("trainer.json")).unwrap()).unwrap();
    assert_eq!((record.step, record.config.grad_accum_steps), (6, 2));

    // Resumed with more steps, fit continues where the set is.
    let mut more = cfg.clone();
    more.steps = 8;
    let mut r = Trainer::resume(&out, data(12), more, &Device::Cpu).unwrap();
    let mut rec2 = Recorder::default();
    let s2 = r.fit(&mut [&mut rec2]).unwrap();
    assert_eq!(s2.steps_run, 2);
    assert_eq!(
        rec2.steps.iter().map(|r| r.step).collect::<Vec<_>>(),
        [7, 8]
    );
    assert!(rec2.saves.is_empty(), "no checkpoint target given");
    // A finished run runs nothing and reports its last validation loss.
    let s3 = r.fit(&mut []).unwrap();
    assert_eq!((s3.steps_run, s3.last_loss), (0, None));
    assert_eq!(s3.val_loss, rec2.evals.last().unwrap().1);
}

#[test]
fn the_train_tiny_example_lowers_the_loss() {
    let (first, last) = train_tiny::train(30).unwrap();
    assert!(last < first - 0.5, "training loss {first} -> {last}");
}
