//! A mixer defined outside the built-in crates, registered exactly as they
//! are (one `lrnnx::mixers!` declaration), then mixed by name with built-ins
//! in a language model, which is saved and loaded back.
//!
//!     cargo run --release --example custom_mixer
//!
//! The mixer, `MyGLR`, is a minimal gated linear recurrence:
//!
//! ```text
//! a_t = sigmoid(W_a x_t + b_a)                 per-channel decay in (0, 1)
//! h_t = a_t * h_{t-1} + (1 - a_t) * (W_v x_t)  the state, width D
//! y_t = W_o h_t
//! ```
//!
//! `forward` runs the recurrence as a parallel scan (the shared
//! `lrnnx_kernels::scan_real_tv::real_tv_scan`, which also has a backward
//! pass), `step` as one update of O(1) state.

use candle_core::{DType, Device, Tensor};
use lrnnx::layers::project;
use lrnnx::{
    check_sequence, check_step_input, match_step_rank, Error, Family, ForwardOpts, Init,
    LRNNLMHeadModel, LmConfig, LmForwardOpts, Mixer, MixerConfig, MixerState, ParamBuilder,
    Registry, Result, StepOpts,
};
use serde::{Deserialize, Serialize};

// The registration: the declaration every built-in crate uses. It defines
// `NAME`, tags `GlrConfig` as the config of "MyGLR", builds from kwargs
// (filling `d_state` from the model), and submits the registry entry.
lrnnx::mixers! {
    /// The registered name.
    NAME = "MyGLR" {
        aliases: ["my_glr"],
        family: Ltv,
        summary: "minimal gated linear recurrence (examples/custom_mixer.rs)",
        config: GlrConfig,
        new: Glr::new,
    }
}

/// Constructor kwargs: defaults in `impl Default`, unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GlrConfig {
    /// State width `D` (built by name: the model's `d_state` unless given).
    d_state: usize,
}

impl Default for GlrConfig {
    fn default() -> Self {
        Self { d_state: 64 }
    }
}

/// The layer. Parameter names are what `model.safetensors` stores.
#[derive(Debug)]
struct Glr {
    cfg: GlrConfig,
    d_model: usize,
    w_a: Tensor,
    b_a: Tensor,
    w_v: Tensor,
    w_o: Tensor,
}

impl Glr {
    fn new(d_model: usize, cfg: GlrConfig, pb: &ParamBuilder) -> Result<Self> {
        if cfg.d_state == 0 {
            return Err(Error::Config("d_state must be positive, found 0".into()));
        }
        let (h, d) = (d_model, cfg.d_state);
        let linear = Init::TorchDefault { fan_in: h };
        Ok(Self {
            w_a: pb.pp("gate").get((d, h), "weight", linear.clone())?,
            // A positive bias starts the decays near 1 (long memory).
            b_a: pb.pp("gate").get(d, "bias", Init::Const(2.0))?,
            w_v: pb.pp("value").get((d, h), "weight", linear)?,
            w_o: pb
                .pp("out")
                .get((h, d), "weight", Init::TorchDefault { fan_in: d })?,
            cfg,
            d_model,
        })
    }

    /// Decay `a` and input `(1 - a) * v` for `x (.., H)`.
    fn gates(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let a = sigmoid(&project(x, &self.w_a, None)?.broadcast_add(&self.b_a)?)?;
        let u = ((1.0 - &a)? * project(x, &self.w_v, None)?)?;
        Ok((a, u))
    }

    fn run(&self, x: &Tensor, h0: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = x.to_dtype(self.w_o.dtype())?;
        let (a, u) = self.gates(&x)?;
        let h = lrnnx_kernels::scan_real_tv::real_tv_scan(&u, &a, Some(h0))?;
        Ok((project(&h, &self.w_o, None)?, h))
    }

    fn zeros(&self, batch: usize, device: &Device) -> Result<Tensor> {
        Ok(Tensor::zeros(
            (batch, self.cfg.d_state),
            self.w_o.dtype(),
            device,
        )?)
    }
}

/// `1 / (1 + exp(-v))`, with autograd.
fn sigmoid(v: &Tensor) -> Result<Tensor> {
    Ok((v.neg()?.exp()? + 1.0)?.recip()?)
}

impl Mixer for Glr {
    fn name(&self) -> &str {
        NAME
    }

    fn config(&self) -> &dyn MixerConfig {
        &self.cfg
    }

    fn forward(&self, x: &Tensor, _opts: &ForwardOpts) -> Result<Tensor> {
        let (b, _) = check_sequence(x, self.d_model, "MyGLR input")?;
        let (y, _) = self.run(x, &self.zeros(b, x.device())?)?;
        Ok(y.to_dtype(x.dtype())?)
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, _opts: &ForwardOpts) -> Result<Tensor> {
        let (_, l) = check_sequence(x, self.d_model, "MyGLR input")?;
        let (y, h) = self.run(x, state.get("h")?)?;
        if l > 0 {
            state.set("h", h.narrow(1, l - 1, 1)?.squeeze(1)?);
        }
        state.seqlen_offset += l;
        Ok(y.to_dtype(x.dtype())?)
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, _opts: &StepOpts) -> Result<Tensor> {
        let x2 =
            check_step_input(x, self.d_model, "MyGLR step input")?.to_dtype(self.w_o.dtype())?;
        let (a, u) = self.gates(&x2)?;
        let h = ((a * state.get("h")?)? + u)?;
        let y = project(&h, &self.w_o, None)?;
        state.set("h", h);
        state.seqlen_offset += 1;
        match_step_rank(y.to_dtype(x.dtype())?, x)
    }

    fn init_state(&self, batch: usize, _: usize, _: DType, device: &Device) -> Result<MixerState> {
        Ok(MixerState::new().with("h", self.zeros(batch, device)?))
    }

    fn family(&self) -> Family {
        Family::Ltv
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// `pub` so that `tests/plugins.rs` can run this example as a test.
pub fn main() -> anyhow::Result<()> {
    lrnnx::init();
    let entry = Registry::get("MyGLR")?;
    println!(
        "registered {} ({}) from {}",
        entry.spec.name, entry.spec.family, entry.spec.source
    );

    // Mixed by name with built-ins.
    let mut cfg = LmConfig::new(64, 16, 256, &["MyGLR", "LRU", "attn"]);
    cfg.mixer_kwargs = serde_json::from_str(
        r#"{"MyGLR": {"d_state": 32}, "attn": {"num_heads": 4, "causal": true}}"#,
    )?;
    let model = LRNNLMHeadModel::init(cfg, 0, &Device::Cpu)?;
    let prompt: Vec<u32> = "a custom mixer".bytes().map(u32::from).collect();
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let logits = model.forward(&ids, &LmForwardOpts::default())?;
    println!(
        "{} parameters, logits {:?}",
        model.num_params(),
        logits.dims()
    );

    // Recurrent decoding gives the same logits as the parallel forward.
    let mut state = model.init_state(1, prompt.len())?;
    let mut steps = Vec::new();
    for t in 0..prompt.len() {
        steps.push(
            model
                .step(&ids.narrow(1, t, 1)?, &mut state, None)?
                .unsqueeze(1)?,
        );
    }
    let d = max_diff(&Tensor::cat(&steps, 1)?, &logits)?;
    println!("step vs forward: max difference {d:.2e}");
    if d > 1e-4 {
        return Err(Error::Config(format!("step differs from forward by {d}")).into());
    }

    // Saved and loaded back: the per-layer config records MyGLR's kwargs.
    let dir = std::env::temp_dir().join(format!("lrnnx-custom-mixer-{}", std::process::id()));
    model.save_pretrained(&dir)?;
    let again = LRNNLMHeadModel::from_pretrained(&dir, None, &Device::Cpu)?;
    let d = max_diff(&again.forward(&ids, &LmForwardOpts::default())?, &logits)?;
    std::fs::remove_dir_all(&dir).ok();
    println!("saved and reloaded: max logit difference {d}");
    if d != 0.0 {
        return Err(Error::Config(format!("reloaded logits differ by {d}")).into());
    }
    Ok(())
}
