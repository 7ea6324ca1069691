//! `LRNNLMHeadModel`: embedding, blocks built by mixer name, final norm, LM head.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{LmConfig, Precision};
use crate::layers::{Block, GatedMlp, Norm, NormKind};
use crate::{
    BuildArgs, Error, ForwardOpts, Init, MixerState, ParamStore, Registry, Result, Role, StepOpts,
};

/// Options of [`LRNNLMHeadModel::forward`].
#[derive(Debug, Clone, Default)]
pub struct LmForwardOpts {
    /// Return logits for the last `n` positions only (0: all).
    pub num_last_tokens: usize,
    /// Event timesteps `(B, L)`, passed to every mixer.
    pub integration_timesteps: Option<Tensor>,
    /// Valid lengths `(B,)`, passed to every mixer.
    pub lengths: Option<Tensor>,
}

/// Decoding state of a whole model: one [`MixerState`] per layer. It can be
/// saved to a file and read back ([`LmState::save`], [`LmState::load`],
/// [`LRNNLMHeadModel::load_state`]) to continue decoding later.
#[derive(Debug, Clone)]
pub struct LmState {
    /// Per-layer states.
    pub layers: Vec<MixerState>,
    /// Tokens consumed so far.
    pub seqlen_offset: usize,
    /// The registered name of each layer's mixer.
    pub mixers: Vec<String>,
    /// The dtype of the model that made it (its compute dtype).
    pub dtype: DType,
}

/// A language model built from a list of registered mixer names, as lrnnx's
/// `LRNNLMHeadModel`: `embedding -> [Block] -> norm_f -> lm_head`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use lrnnx_framework::{LmConfig, LRNNLMHeadModel, LmForwardOpts, MixerSpec, Registry};
/// # fn main() -> lrnnx_framework::Result<()> {
/// // Any registered mixer names work; this doc test links no mixer crate
/// // (the `lrnnx` facade does, in `lrnnx::init()`), so it stops at the error.
/// let cfg = LmConfig::new(16, 8, 100, &["NoSuchMixer"]);
/// let err = LRNNLMHeadModel::init(cfg, 0, &Device::Cpu).unwrap_err();
/// assert!(err.to_string().contains("no linked mixers are registered"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LRNNLMHeadModel {
    config: LmConfig,
    embedding: Tensor,
    layers: Vec<Block>,
    norm_f: Norm,
    lm_head: Tensor,
    store: Arc<ParamStore>,
    /// The dtype activations are computed in (the store's dtype unless set).
    compute: DType,
}

impl LRNNLMHeadModel {
    /// A freshly initialised model (seeded), on `device`, in f32.
    pub fn init(config: LmConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::init_with(config, seed, device, Precision::F32)
    }

    /// A freshly initialised model (seeded), on `device`, in `precision`:
    /// parameters drawn as for f32 and then stored in `precision.params`.
    pub fn init_with(
        config: LmConfig,
        seed: u64,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        let store = ParamStore::init(seed, precision.params, device);
        let model = Self::build(config, store)?.with_compute_dtype(precision.compute)?;
        model.reinit_like_lrnnx()?;
        Ok(model)
    }

    /// The model computing in `dtype` (a float dtype); its parameters stay as stored.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Result<Self> {
        if !dtype.is_float() {
            return Err(Error::Config(format!(
                "the compute dtype must be a float dtype, found {dtype:?}"
            )));
        }
        self.compute = dtype;
        Ok(self)
    }

    /// The parameter and compute dtypes.
    pub fn precision(&self) -> Precision {
        Precision {
            params: self.store.dtype(),
            compute: self.compute,
        }
    }

    /// Builds the model with parameters from `store` (initialised or loaded).
    pub fn build(mut config: LmConfig, store: Arc<ParamStore>) -> Result<Self> {
        config.validate()?;
        let pb = store.builder();
        let d = config.d_model;
        let vocab = config.padded_vocab_size();
        let embedding = pb.pp("backbone.embedding").get(
            (vocab, d),
            "weight",
            Init::Normal {
                mean: 0.0,
                std: 0.02,
            },
        )?;
        let norm_kind = if config.rms_norm {
            NormKind::Rms
        } else {
            NormKind::Layer
        };
        let eps = config.norm_epsilon;
        let mut layers = Vec::with_capacity(config.n_layer);
        let mut layer_configs = Vec::with_capacity(config.n_layer);
        let mut sources = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let lb = pb.pp(format!("backbone.layers.{i}"));
            let name = &config.mixer_types[i];
            let recorded = config
                .mixer_sources
                .as_ref()
                .and_then(|s| s.get(i))
                .map(String::as_str);
            let entry = Registry::get(name)
                .map_err(|e| crate::plugin::explain_missing_mixer(e, i, recorded))?;
            sources.push(crate::plugin::source_label(&entry));
            let norm = Norm::new(norm_kind, d, eps, &lb.pp("norm"))?;
            let args = BuildArgs {
                d_model: d,
                d_state: config.d_state,
                layer_idx: i,
                kwargs: config.layer_kwargs(i)?,
                params: lb.pp("mixer"),
            };
            let mixer = (entry.spec.build)(&args)?;
            layer_configs.push(crate::config_to_json(mixer.config())?);
            let mlp = if config.d_intermediate > 0 {
                Some((
                    Norm::new(norm_kind, d, eps, &lb.pp("norm2"))?,
                    GatedMlp::new(d, config.d_intermediate, &lb.pp("mlp"))?,
                ))
            } else {
                None
            };
            layers.push(Block::new(mixer, norm, mlp, config.residual_in_fp32));
        }
        let norm_f = Norm::new(norm_kind, d, eps, &pb.pp("backbone.norm_f"))?;
        let lm_head = if config.tie_embeddings {
            // A checkpoint may also store the head; tied, it must equal the embedding.
            pb.alias("lm_head.weight", "backbone.embedding.weight")?;
            embedding.clone()
        } else {
            pb.pp("lm_head")
                .get((vocab, d), "weight", Init::TorchDefault { fan_in: d })?
        };
        let unused = store.unused_keys();
        if !unused.is_empty() {
            return Err(Error::UnexpectedTensors { keys: unused });
        }
        config.layers = Some(layer_configs);
        config.mixer_sources = Some(sources);
        Ok(Self {
            config,
            embedding,
            layers,
            norm_f,
            lm_head,
            compute: store.dtype(),
            store,
        })
    }

    /// lrnnx's `_init_weights` (GPT-2 style), applied by [`Role`] after the
    /// layers drew their own inits: every [`Role::LinearBias`] zeroed, every
    /// [`Role::ResidualOutput`] weight redrawn from `U(±1/sqrt(fan_in))` and
    /// divided by `sqrt(n_layer)`; everything else (convs, norms,
    /// [`Role::NoReinit`], unmarked plugin parameters) kept.
    fn reinit_like_lrnnx(&self) -> Result<()> {
        let n_layer = self.config.n_layer.max(1) as f64;
        let builder = ParamStore::init(
            0x5eed ^ self.config.n_layer as u64,
            DType::F32,
            &Device::Cpu,
        );
        for (name, var) in self.store.vars() {
            match self.store.role(&name) {
                Role::LinearBias => var.set(&var.as_tensor().zeros_like()?)?,
                Role::ResidualOutput => {
                    let dims = var.as_tensor().dims().to_vec();
                    let fan_in = dims.get(1).copied().unwrap_or(1);
                    let t = builder.builder().get(
                        dims.as_slice(),
                        &name,
                        Init::TorchDefault { fan_in },
                    )?;
                    let t = (t / n_layer.sqrt())?.to_device(var.as_tensor().device())?;
                    var.set(&t.to_dtype(var.as_tensor().dtype())?)?;
                }
                Role::Other | Role::LinearWeight | Role::NoReinit => {}
            }
        }
        Ok(())
    }

    /// The configuration, per-layer configs filled in.
    pub fn config(&self) -> &LmConfig {
        &self.config
    }

    /// The parameter store (for optimizers and saving).
    pub fn store(&self) -> &Arc<ParamStore> {
        &self.store
    }

    /// The blocks.
    pub fn layers(&self) -> &[Block] {
        &self.layers
    }

    /// Device the parameters live on.
    pub fn device(&self) -> &Device {
        self.embedding.device()
    }

    /// Number of distinct parameters (a tied head counted once).
    pub fn num_params(&self) -> usize {
        self.store.vars().values().map(|v| v.elem_count()).sum()
    }

    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let vocab = self.config.padded_vocab_size();
        let ids = input_ids.to_dtype(DType::I64)?;
        let flat = ids.flatten_all()?;
        if flat.elem_count() > 0 {
            let max = flat.max(0)?.to_scalar::<i64>()?;
            let min = flat.min(0)?.to_scalar::<i64>()?;
            if min < 0 || max as usize >= vocab {
                return Err(Error::shape(
                    "input_ids",
                    format!("token ids in 0..{vocab}"),
                    format!("ids in {min}..={max}"),
                ));
            }
        }
        let ids = flat.to_dtype(DType::U32)?;
        let mut dims = input_ids.dims().to_vec();
        dims.push(self.config.d_model);
        Ok(self
            .embedding
            .index_select(&ids, 0)?
            .reshape(dims)?
            .to_dtype(self.compute)?)
    }

    fn head(&self, hidden: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let residual = match residual {
            Some(r) => (r.to_dtype(hidden.dtype())? + hidden)?,
            None => hidden.clone(),
        };
        let h = self.norm_f.forward(&residual)?;
        let head = self.lm_head.to_dtype(h.dtype())?;
        // Logits (and so the loss) in f32, f64 models keeping f64.
        let wide = if h.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        Ok(h.broadcast_matmul(&head.t()?)?.to_dtype(wide)?)
    }

    fn check_ids(input_ids: &Tensor) -> Result<(usize, usize)> {
        match input_ids.dims() {
            &[b, l] => Ok((b, l)),
            d => Err(Error::shape("input_ids", "(batch, seqlen)", d)),
        }
    }

    /// Logits `(B, L, padded_vocab)` for token ids `(B, L)` (or the last
    /// `num_last_tokens` positions).
    pub fn forward(&self, input_ids: &Tensor, opts: &LmForwardOpts) -> Result<Tensor> {
        Self::check_ids(input_ids)?;
        let fwd = ForwardOpts {
            integration_timesteps: opts.integration_timesteps.clone(),
            lengths: opts.lengths.clone(),
        };
        let mut hidden = self.embed(input_ids)?;
        let mut residual: Option<Tensor> = None;
        for layer in &self.layers {
            let (h, r) = layer.forward(&hidden, residual.as_ref(), &fwd)?;
            hidden = h;
            residual = Some(r);
        }
        let (hidden, residual) = last_tokens(hidden, residual, opts.num_last_tokens)?;
        self.head(&hidden, residual.as_ref())
    }

    /// A fresh decoding state for `batch` sequences of up to `max_seqlen` tokens.
    pub fn init_state(&self, batch: usize, max_seqlen: usize) -> Result<LmState> {
        let dtype = self.compute;
        let layers = self
            .layers
            .iter()
            .map(|l| l.mixer.init_state(batch, max_seqlen, dtype, self.device()))
            .collect::<Result<Vec<_>>>()?;
        Ok(LmState {
            layers,
            seqlen_offset: 0,
            mixers: self
                .layers
                .iter()
                .map(|l| l.mixer.name().to_string())
                .collect(),
            dtype,
        })
    }

    /// Runs the parallel forward over a prompt `(B, L)` and returns the logits
    /// of its last position `(B, padded_vocab)` with the state after it, ready
    /// for [`LRNNLMHeadModel::step`].
    ///
    /// With `opts.lengths` (`(B,)`, each in `1..=L`), sequence `b` is the
    /// first `lengths[b]` tokens of its row (the rest is padding): its logits
    /// are those of position `lengths[b] - 1` and its state is the one a
    /// prefill of it alone would leave. Unequal lengths are refused for a
    /// model with attention (its KV cache keeps one position for the whole
    /// batch); the offsets then count the longest sequence.
    pub fn prefill(
        &self,
        input_ids: &Tensor,
        state: &mut LmState,
        opts: &LmForwardOpts,
    ) -> Result<Tensor> {
        let (b, l) = Self::check_ids(input_ids)?;
        if l == 0 {
            return Err(Error::shape(
                "prompt",
                "at least one token",
                input_ids.dims(),
            ));
        }
        if state.layers.len() != self.layers.len() {
            return Err(Error::shape(
                "decoding state",
                format!("{} layer states", self.layers.len()),
                state.layers.len(),
            ));
        }
        if let Some(lengths) = &opts.lengths {
            let lens = super::ragged::lengths_of(lengths, b, l)?;
            if lens.iter().any(|&n| n != l) {
                return self.prefill_ragged(
                    input_ids,
                    state,
                    opts.integration_timesteps.as_ref(),
                    &lens,
                );
            }
        }
        self.prefill_full(input_ids, state, opts.integration_timesteps.clone())
    }

    /// Prefill of every sequence at the prompt's full length.
    pub(super) fn prefill_full(
        &self,
        input_ids: &Tensor,
        state: &mut LmState,
        integration_timesteps: Option<Tensor>,
    ) -> Result<Tensor> {
        let (_, l) = Self::check_ids(input_ids)?;
        let fwd = ForwardOpts {
            integration_timesteps,
            lengths: None,
        };
        let mut hidden = self.embed(input_ids)?;
        let mut residual: Option<Tensor> = None;
        for (layer, st) in self.layers.iter().zip(state.layers.iter_mut()) {
            let (h, r) = layer.prefill(&hidden, residual.as_ref(), st, &fwd)?;
            hidden = h;
            residual = Some(r);
        }
        state.seqlen_offset += l;
        let (hidden, residual) = last_tokens(hidden, residual, 1)?;
        Ok(self.head(&hidden, residual.as_ref())?.squeeze(1)?)
    }

    /// One decoding step: token ids `(B,)` or `(B, 1)` to logits `(B, padded_vocab)`.
    pub fn step(
        &self,
        input_ids: &Tensor,
        state: &mut LmState,
        integration_timesteps: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ids = match input_ids.dims() {
            [_] => input_ids.clone(),
            [_, 1] => input_ids.squeeze(1)?,
            d => return Err(Error::shape("step input_ids", "(batch,) or (batch, 1)", d)),
        };
        if state.layers.len() != self.layers.len() {
            return Err(Error::shape(
                "decoding state",
                format!("{} layer states", self.layers.len()),
                state.layers.len(),
            ));
        }
        let opts = StepOpts {
            integration_timesteps: integration_timesteps.cloned(),
        };
        let mut hidden = self.embed(&ids)?;
        let mut residual: Option<Tensor> = None;
        for (layer, st) in self.layers.iter().zip(state.layers.iter_mut()) {
            let (h, r) = layer.step(&hidden, residual.as_ref(), st, &opts)?;
            hidden = h;
            residual = Some(r);
        }
        state.seqlen_offset += 1;
        self.head(&hidden, residual.as_ref())
    }

    /// Builds with parameters read from a map of tensors keyed by state-dict name.
    pub fn from_tensors(
        config: LmConfig,
        tensors: std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        Self::build(config, ParamStore::load(tensors, DType::F32, device))
    }

    /// The state-dict names of the parameters that are complex in PyTorch
    /// (written as complex64 by `save_pretrained`).
    pub fn complex_keys(&self) -> std::collections::BTreeSet<String> {
        self.store.complex_keys()
    }

    /// Every parameter by state-dict name, with `lm_head.weight` present also when tied
    /// (as in lrnnx's `state_dict`).
    pub fn state_dict(&self) -> std::collections::BTreeMap<String, Tensor> {
        let mut map = self.store.tensors();
        if self.config.tie_embeddings {
            map.insert("lm_head.weight".into(), self.embedding.clone());
        }
        map
    }
}

fn last_tokens(
    hidden: Tensor,
    residual: Option<Tensor>,
    n: usize,
) -> Result<(Tensor, Option<Tensor>)> {
    let l = hidden.dim(1)?;
    if n == 0 || n >= l {
        return Ok((hidden, residual));
    }
    let h = hidden.narrow(1, l - n, n)?;
    let r = match residual {
        Some(r) => Some(r.narrow(1, l - n, n)?),
        None => None,
    };
    Ok((h, r))
}
