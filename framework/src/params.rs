//! Where layers get their parameters: freshly initialised, or read from a checkpoint.
//!
//! A [`ParamBuilder`] is handed to every layer constructor. In *init* mode it
//! draws each parameter from its [`Init`] with a seeded generator; in *load*
//! mode it takes the tensor stored under the same key, after checking its
//! shape. Either way it records every parameter under its full dotted name
//! (the PyTorch `state_dict` key), so the model can list, save or train them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::{Error, Result};

/// How a parameter is initialised when no checkpoint provides it.
#[derive(Debug, Clone)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every element equal to the value.
    Const(f64),
    /// Normal distribution.
    Normal { mean: f64, std: f64 },
    /// Uniform distribution on `[lo, hi)`.
    Uniform { lo: f64, hi: f64 },
    /// PyTorch's default for `nn.Linear` / `nn.Conv1d` weights and biases:
    /// uniform on `±1/sqrt(fan_in)`.
    TorchDefault { fan_in: usize },
}

/// What a parameter is, for initialisation schemes that treat kinds of
/// parameters differently (lrnnx's GPT-2-style `_init_weights`, which
/// [`LRNNLMHeadModel::init`](crate::LRNNLMHeadModel::init) applies). A
/// parameter nobody marks is [`Role::Other`] and keeps its own init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// No scheme touches it.
    #[default]
    Other,
    /// The weight of a dense layer (`nn.Linear`).
    LinearWeight,
    /// The bias of a dense layer: zeroed by lrnnx's `_init_weights`.
    LinearBias,
    /// The weight of a dense layer whose output joins the residual stream
    /// (lrnnx's `out_proj.weight`, `fc2.weight`): redrawn from
    /// `U(±1/sqrt(fan_in))` and divided by `sqrt(n_layer)`.
    ResidualOutput,
    /// lrnnx's `_no_reinit`: a bias with a structured init of its own
    /// (Mamba's `dt_proj.bias`) that no scheme may reset.
    NoReinit,
}

/// Most parameter elements one store hands out (all parameters together,
/// 2^33: 32 GiB of f32), unless `LRNNX_MAX_PARAMS` says otherwise. A config
/// asking for more is refused with the figure before anything is allocated.
pub const DEFAULT_MAX_PARAMS: u64 = 1 << 33;

/// The element budget of a store: `LRNNX_MAX_PARAMS` or [`DEFAULT_MAX_PARAMS`].
fn max_params() -> u64 {
    std::env::var("LRNNX_MAX_PARAMS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_PARAMS)
}

/// The element count of `dims`, or `None` when it overflows `u64`.
fn checked_elems(dims: &[usize]) -> Option<u64> {
    dims.iter()
        .try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
}

struct Inner {
    loaded: Option<HashMap<String, Tensor>>,
    used: HashSet<String>,
    params: BTreeMap<String, Var>,
    /// Non-trainable tensors saved with the model (PyTorch buffers).
    buffers: BTreeMap<String, Tensor>,
    /// Second names of parameters (alias -> target), saved under both.
    aliases: BTreeMap<String, String>,
    /// Roles marked with [`ParamBuilder::mark`]; absent means [`Role::Other`].
    roles: HashMap<String, Role>,
    /// Parameters that are complex in PyTorch (stored here as `(..., 2)`
    /// real/imaginary pairs), marked with [`ParamBuilder::mark_complex`].
    complex: BTreeSet<String>,
    /// Elements of every parameter handed out so far.
    elements: u64,
    rng: StdRng,
}

/// The shared store behind every [`ParamBuilder`] of one model.
pub struct ParamStore {
    inner: Mutex<Inner>,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl ParamStore {
    fn with(
        loaded: Option<HashMap<String, Tensor>>,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                loaded,
                used: HashSet::new(),
                params: BTreeMap::new(),
                buffers: BTreeMap::new(),
                aliases: BTreeMap::new(),
                roles: HashMap::new(),
                complex: BTreeSet::new(),
                elements: 0,
                rng: StdRng::seed_from_u64(seed),
            }),
            device: device.clone(),
            dtype,
        })
    }

    /// A store that initialises every parameter, drawing from a generator seeded with `seed`.
    pub fn init(seed: u64, dtype: DType, device: &Device) -> Arc<Self> {
        Self::with(None, seed, dtype, device)
    }

    /// A store that reads every parameter from `tensors` (keys are full dotted names).
    pub fn load(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Arc<Self> {
        Self::with(Some(tensors), 0, dtype, device)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-insert; the
        // map itself is still consistent, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A builder rooted at the empty prefix.
    pub fn builder(self: &Arc<Self>) -> ParamBuilder {
        ParamBuilder {
            store: self.clone(),
            prefix: String::new(),
        }
    }

    /// Every parameter handed out so far, by full name.
    pub fn vars(&self) -> BTreeMap<String, Var> {
        self.lock().params.clone()
    }

    /// Everything a checkpoint holds: parameters, buffers, and parameters
    /// again under their aliases (as PyTorch's `state_dict` lists shared ones).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        let inner = self.lock();
        let mut map: BTreeMap<String, Tensor> = inner
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        map.extend(inner.buffers.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (alias, target) in &inner.aliases {
            if let Some(t) = map.get(target).cloned() {
                map.insert(alias.clone(), t);
            }
        }
        map
    }

    /// The role of parameter `key` (full dotted name).
    pub fn role(&self, key: &str) -> Role {
        self.lock().roles.get(key).copied().unwrap_or_default()
    }

    /// The keys of parameters that are complex in PyTorch (see
    /// [`ParamBuilder::mark_complex`]); saving writes them as complex64.
    pub fn complex_keys(&self) -> BTreeSet<String> {
        self.lock().complex.clone()
    }

    /// Marks a loaded key as consumed without turning it into a parameter
    /// (for tensors a checkpoint stores twice, such as a tied LM head).
    pub fn mark_used(&self, key: &str) {
        self.lock().used.insert(key.to_string());
    }

    /// Checkpoint keys that no layer asked for, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        let inner = self.lock();
        let mut keys: Vec<String> = match &inner.loaded {
            Some(map) => map
                .keys()
                .filter(|k| !inner.used.contains(*k))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        keys.sort();
        keys
    }

    /// Whether a loaded checkpoint holds `key`.
    pub fn has_loaded(&self, key: &str) -> bool {
        self.lock()
            .loaded
            .as_ref()
            .is_some_and(|m| m.contains_key(key))
    }

    /// Device parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Dtype parameters are stored in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

fn sample(init: &Init, n: usize, rng: &mut StdRng) -> Vec<f32> {
    match *init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Const(c) => vec![c as f32; n],
        Init::Normal { mean, std } => (0..n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(rng);
                (mean + std * z) as f32
            })
            .collect(),
        Init::Uniform { lo, hi } => (0..n).map(|_| rng.random_range(lo..hi) as f32).collect(),
        Init::TorchDefault { fan_in } => {
            let b = 1.0 / (fan_in.max(1) as f64).sqrt();
            (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
        }
    }
}

/// Hands out parameters under a dotted prefix, e.g. `backbone.layers.0.mixer`.
///
/// ```
/// use candle_core::{DType, Device};
/// use lrnnx_framework::{Init, ParamStore};
/// let store = ParamStore::init(0, DType::F32, &Device::Cpu);
/// let w = store.builder().pp("fc").get((4, 3), "weight", Init::Normal { mean: 0.0, std: 0.02 })?;
/// assert_eq!(w.dims(), &[4, 3]);
/// assert!(store.vars().contains_key("fc.weight"));
/// # Ok::<(), lrnnx_framework::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ParamBuilder {
    store: Arc<ParamStore>,
    prefix: String,
}

impl ParamBuilder {
    /// A builder one level down: `pp("mixer")` turns `layers.0` into `layers.0.mixer`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self {
            store: self.store.clone(),
            prefix: self.key(&name.to_string()),
        }
    }

    /// The full key of `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The store behind this builder.
    pub fn store(&self) -> &Arc<ParamStore> {
        &self.store
    }

    /// Device parameters live on.
    pub fn device(&self) -> &Device {
        self.store.device()
    }

    /// Dtype parameters are stored in.
    pub fn dtype(&self) -> DType {
        self.store.dtype()
    }

    /// Records what parameter `name` (relative to this prefix) is, for
    /// initialisation schemes that go by [`Role`]; the last mark wins.
    pub fn mark(&self, name: &str, role: Role) {
        let key = self.key(name);
        self.store.lock().roles.insert(key, role);
    }

    /// Marks `name` (relative to this prefix, shape `(..., 2)`: real and
    /// imaginary parts) as a complex parameter in PyTorch, such as
    /// Centaurus' `A`: `save_pretrained` writes it as one complex64 tensor
    /// without the trailing 2, which lrnnx's `load_state_dict` takes as it is.
    pub fn mark_complex(&self, name: &str) {
        let key = self.key(name);
        self.store.lock().complex.insert(key);
    }

    /// Records `alias` as a second name of the parameter `target` (both
    /// relative to this prefix): a checkpoint may hold either or both (a
    /// loaded alias must equal the target up to 1e-6 relative), and saving writes both.
    pub fn alias(&self, alias: &str, target: &str) -> Result<()> {
        let (akey, tkey) = (self.key(alias), self.key(target));
        let mut inner = self.store.lock();
        let target_t = inner.params.get(&tkey).map(|v| v.as_tensor().clone());
        if let (Some(Some(a)), Some(t)) = (
            inner.loaded.as_ref().map(|m| m.get(&akey)),
            target_t.as_ref(),
        ) {
            let a = a.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
            let t = t.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
            if a.dims() != t.dims() {
                return Err(Error::TensorShape {
                    key: akey,
                    expected: t.dims().to_vec(),
                    found: a.dims().to_vec(),
                });
            }
            let diff = (&a - &t)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f64>()?;
            let scale = t.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?.max(1.0);
            if diff > 1e-6 * scale {
                return Err(Error::Config(format!(
                    "checkpoint tensors `{akey}` and `{tkey}` should be one shared tensor but differ by {diff:e}"
                )));
            }
        }
        inner.used.insert(akey.clone());
        inner.aliases.insert(akey, tkey);
        Ok(())
    }

    /// A non-trainable tensor saved with the model (a PyTorch buffer), loaded
    /// if present, else built by `init`. Its shape is not checked: buffers such
    /// as step counters are scalars of any dtype.
    pub fn buffer(&self, name: &str, init: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        let key = self.key(name);
        let mut inner = self.store.lock();
        if let Some(t) = inner.buffers.get(&key) {
            return Ok(t.clone());
        }
        let t = match inner.loaded.as_ref().and_then(|m| m.get(&key)) {
            Some(t) => t.to_device(&self.store.device)?,
            None => init()?.to_device(&self.store.device)?,
        };
        inner.used.insert(key.clone());
        inner.buffers.insert(key, t.clone());
        Ok(t)
    }

    /// Replaces a buffer's value (e.g. a cache the layer recomputes), so that saving writes the new one.
    pub fn set_buffer(&self, name: &str, t: Tensor) {
        let key = self.key(name);
        self.store.lock().buffers.insert(key, t);
    }

    /// The parameter `name` of shape `shape`, drawn from `init` unless loaded.
    pub fn get(
        &self,
        shape: impl Into<candle_core::Shape>,
        name: &str,
        init: Init,
    ) -> Result<Tensor> {
        let shape = shape.into();
        self.get_with(shape.clone(), name, |rng| {
            let data = sample(&init, shape.elem_count(), rng);
            Ok(Tensor::from_vec(data, shape.clone(), &Device::Cpu)?)
        })
    }

    /// The parameter `name` of shape `shape`; when not loaded, `init` builds
    /// it (on the CPU, from the store's seeded generator) — for the
    /// structured initialisations of state-space models.
    pub fn get_with(
        &self,
        shape: impl Into<candle_core::Shape>,
        name: &str,
        init: impl FnOnce(&mut StdRng) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let key = self.key(name);
        let mut inner = self.store.lock();
        if let Some(v) = inner.params.get(&key) {
            return Ok(v.as_tensor().clone());
        }
        let budget = max_params();
        let total = checked_elems(shape.dims())
            .and_then(|n| n.checked_add(inner.elements))
            .filter(|&n| n <= budget)
            .ok_or_else(|| {
                Error::Config(format!(
                    "parameter `{key}` of shape {:?} would bring the model to {} elements, \
                     more than the {budget} allowed (set LRNNX_MAX_PARAMS to raise it); \
                     check the config's sizes",
                    shape.dims(),
                    checked_elems(shape.dims())
                        .and_then(|n| n.checked_add(inner.elements))
                        .map_or("more than 2^64".to_string(), |n| n.to_string()),
                ))
            })?;
        let t = match inner.loaded.as_ref().map(|m| m.get(&key)) {
            Some(Some(t)) => {
                if t.dims() != shape.dims() {
                    return Err(Error::TensorShape {
                        key,
                        expected: shape.dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                t.clone()
            }
            Some(None) => return Err(Error::MissingTensor { key, hint: None }),
            None => {
                let t = init(&mut inner.rng)?;
                if t.dims() != shape.dims() {
                    return Err(Error::Config(format!(
                        "initialiser of `{key}` built shape {:?}, expected {:?}",
                        t.dims(),
                        shape.dims()
                    )));
                }
                t
            }
        };
        let t = t
            .to_dtype(self.store.dtype)?
            .to_device(&self.store.device)?;
        let var = Var::from_tensor(&t)?;
        inner.elements = total;
        inner.used.insert(key.clone());
        inner.params.insert(key, var.clone());
        Ok(var.as_tensor().clone())
    }
}

/// Random helpers for initialisers passed to [`ParamBuilder::get_with`].
pub mod random {
    use super::*;

    /// `n` uniform samples on `[lo, hi)`.
    pub fn uniform(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    }

    /// `n` standard-normal samples.
    pub fn normal(rng: &mut StdRng, n: usize) -> Vec<f64> {
        (0..n).map(|_| StandardNormal.sample(rng)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_mode_checks_shapes_and_names_missing_keys() {
        let dev = Device::Cpu;
        let mut map = HashMap::new();
        map.insert(
            "a.w".to_string(),
            Tensor::zeros((2, 3), DType::F32, &dev).unwrap(),
        );
        map.insert(
            "a.extra".to_string(),
            Tensor::zeros(1, DType::F32, &dev).unwrap(),
        );
        let store = ParamStore::load(map, DType::F32, &dev);
        let b = store.builder().pp("a");
        let err = b.get((3, 2), "w", Init::Zeros).unwrap_err().to_string();
        assert!(
            err.contains("a.w") && err.contains("[2, 3]") && err.contains("[3, 2]"),
            "{err}"
        );
        let err = b.get(4, "missing", Init::Zeros).unwrap_err().to_string();
        assert!(err.contains("a.missing"), "{err}");
        b.get((2, 3), "w", Init::Zeros).unwrap();
        assert_eq!(store.unused_keys(), vec!["a.extra".to_string()]);
    }

    #[test]
    fn aliases_and_buffers_are_saved_and_checked() {
        let dev = Device::Cpu;
        let store = ParamStore::init(0, DType::F32, &dev);
        let b = store.builder().pp("m");
        b.get(3, "A", Init::Ones).unwrap();
        b.alias("kernel.A", "A").unwrap();
        b.buffer("count", || Ok(Tensor::new(&[16i64], &dev)?))
            .unwrap();
        let saved = store.tensors();
        assert!(
            saved.contains_key("m.A")
                && saved.contains_key("m.kernel.A")
                && saved.contains_key("m.count")
        );
        // Reload: the alias is consumed; a disagreeing alias is refused.
        let reload = |alias_value: f32| {
            let mut map: HashMap<String, Tensor> = saved.clone().into_iter().collect();
            map.insert(
                "m.kernel.A".into(),
                Tensor::new(&[alias_value; 3], &dev).unwrap(),
            );
            let s = ParamStore::load(map, DType::F32, &dev);
            let b = s.builder().pp("m");
            b.get(3, "A", Init::Zeros).unwrap();
            let r = b.alias("kernel.A", "A");
            b.buffer("count", || unreachable!("loaded")).unwrap();
            (r, s.unused_keys())
        };
        let (ok, unused) = reload(1.0);
        assert!(ok.is_ok() && unused.is_empty(), "{unused:?}");
        let (bad, _) = reload(2.0);
        assert!(bad.unwrap_err().to_string().contains("m.kernel.A"));
    }

    #[test]
    fn init_mode_is_seeded() {
        let draw = |seed| {
            let s = ParamStore::init(seed, DType::F32, &Device::Cpu);
            s.builder()
                .get(
                    5,
                    "x",
                    Init::Normal {
                        mean: 0.0,
                        std: 1.0,
                    },
                )
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
