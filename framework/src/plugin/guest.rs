//! The plugin side: this code runs in the plugin's own copy of the
//! framework. [`export_plugin!`](crate::export_plugin) defines the exported
//! symbols; [`guarded_build!`](crate::guarded_build) wraps each builder of
//! a plugin (one wrapper function per use, so there is no limit on how many
//! mixers a plugin registers) so that its panics, and those of the mixers it
//! builds, come back to the host as [`Error::Plugin`]s.

use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use super::abi::{PluginStatus, RegisterFn, Registrar, STATUS_ERROR, STATUS_OK, STATUS_PANIC};
use crate::{
    BuildArgs, BuildFn, Discretization, Error, Family, ForwardOpts, Lti, Ltv, Mixer, MixerConfig,
    MixerSpec, MixerState, Result, StepOpts,
};

/// Defines a plugin's exported symbols: the ABI fingerprint and the entry
/// `lrnnx_plugin_v1`, which runs `register` with panics caught (a panic comes
/// back to the host as an error). Use it once, at the root of a `cdylib` crate.
///
/// ```ignore
/// fn register(host: &mut dyn lrnnx_framework::plugin::Registrar) -> lrnnx_framework::Result<()> {
///     host.add(my_spec())
/// }
/// lrnnx_framework::export_plugin!(register);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($register:path) => {
        /// The ABI fingerprint the host checks before calling anything here.
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static lrnnx_plugin_fingerprint: [u8; $crate::plugin::FINGERPRINT_C_LEN] =
            $crate::plugin::FINGERPRINT_C;

        /// The registration entry the host calls after the fingerprint check.
        #[doc(hidden)]
        #[allow(improper_ctypes_definitions)]
        #[unsafe(no_mangle)]
        pub extern "C" fn lrnnx_plugin_v1(
            host: &mut dyn $crate::plugin::Registrar,
        ) -> $crate::plugin::PluginStatus {
            $crate::plugin::run_registration(host, $register)
        }
    };
}

/// Runs a plugin's registration function for the entry: panics are caught,
/// every spec's builder must come from [`guarded_build!`](crate::guarded_build),
/// so that its mixers catch their panics too.
#[doc(hidden)]
pub fn run_registration(host: &mut dyn Registrar, register: RegisterFn) -> PluginStatus {
    *PLUGIN_PATH.lock().unwrap_or_else(|e| e.into_inner()) = Some(host.plugin_path().into());
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut guarding = GuardingRegistrar { host };
        register(&mut guarding)
    }));
    match outcome {
        Ok(Ok(())) => PluginStatus {
            code: STATUS_OK,
            message: std::ptr::null_mut(),
        },
        Ok(Err(e)) => status(STATUS_ERROR, &e.to_string()),
        Err(payload) => status(STATUS_PANIC, &panic_message(payload.as_ref())),
    }
}

fn status(code: u32, message: &str) -> PluginStatus {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    PluginStatus {
        code,
        message: c.into_raw(),
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// Wraps a plugin mixer's builder so that a panic in it, or in any
/// [`Mixer`] / [`Lti`] / [`Ltv`] method of the mixers it builds, comes back
/// to the host as an [`Error::Plugin`] instead of unwinding across the
/// plugin boundary. Every spec a plugin hands to its [`Registrar`] must be
/// built with it (the registration is refused otherwise):
///
/// ```ignore
/// MixerSpec { name: "minGRU", build: lrnnx_framework::guarded_build!(build), /* ... */ }
/// ```
///
/// Each use defines its own wrapper function, so a plugin may register any
/// number of mixers (ABI v1 had a fixed table of 32 wrappers instead). The
/// builder must be a path to a function or another item callable as
/// `fn(&BuildArgs) -> Result<Box<dyn Mixer>>`. Outside a plugin (a program
/// linking the crate) the wrapper is harmless: errors pass through unchanged.
#[macro_export]
macro_rules! guarded_build {
    ($build:path) => {{
        fn __lrnnx_guarded_build(
            args: &$crate::BuildArgs,
        ) -> $crate::Result<::std::boxed::Box<dyn $crate::Mixer>> {
            $crate::plugin::call_guarded(
                __lrnnx_guarded_build,
                ::core::stringify!($build),
                ::core::env!("CARGO_PKG_NAME"),
                $build,
                args,
            )
        }
        $crate::plugin::mark_guarded(__lrnnx_guarded_build)
    }};
}

/// Addresses of the wrappers [`guarded_build!`](crate::guarded_build) made
/// in this copy of the framework, with the names of the mixers registered
/// with each (one wrapper may serve several specs).
static GUARDED: Mutex<Vec<(usize, Vec<&'static str>)>> = Mutex::new(Vec::new());

/// The path the host loaded this plugin from (set by [`run_registration`];
/// each plugin links its own copy of the framework, so one path per copy).
static PLUGIN_PATH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Records `wrapper` as a panic-guarded builder (what
/// [`guarded_build!`](crate::guarded_build) expands to) and returns it.
#[doc(hidden)]
pub fn mark_guarded(wrapper: BuildFn) -> BuildFn {
    let mut guarded = GUARDED.lock().unwrap_or_else(|e| e.into_inner());
    let key = wrapper as usize;
    if !guarded.iter().any(|(k, _)| *k == key) {
        guarded.push((key, Vec::new()));
    }
    wrapper
}

/// Notes that the spec `name` builds with `build`; false when `build` is
/// not a wrapper made by [`guarded_build!`](crate::guarded_build).
fn note_guarded_spec(build: BuildFn, name: &'static str) -> bool {
    let mut guarded = GUARDED.lock().unwrap_or_else(|e| e.into_inner());
    match guarded.iter_mut().find(|(k, _)| *k == build as usize) {
        Some((_, names)) => {
            names.push(name);
            true
        }
        None => false,
    }
}

/// How a panic message names the mixer(s) a wrapper builds.
fn describe_builder(wrapper: BuildFn, builder: &str) -> String {
    let guarded = GUARDED.lock().unwrap_or_else(|e| e.into_inner());
    let names = guarded
        .iter()
        .find(|(k, _)| *k == wrapper as usize)
        .map(|(_, n)| n.as_slice())
        .unwrap_or_default();
    match names {
        [one] => format!("mixer `{one}` (builder `{builder}`)"),
        [] => format!("the mixer builder `{builder}`"),
        many => format!(
            "the builder `{builder}` (of mixers {})",
            many.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The plugin's path for error messages: where the host loaded it from, or
/// the crate's name when it was linked rather than loaded.
fn plugin_path(krate: &str) -> PathBuf {
    PLUGIN_PATH
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{krate} (linked, not loaded as a plugin)")))
}

/// The body of every [`guarded_build!`](crate::guarded_build) wrapper:
/// runs `build` with panics caught and wraps what it builds in [`Guarded`].
#[doc(hidden)]
pub fn call_guarded(
    wrapper: BuildFn,
    builder: &'static str,
    krate: &'static str,
    build: BuildFn,
    args: &BuildArgs,
) -> Result<Box<dyn Mixer>> {
    match catch_unwind(AssertUnwindSafe(|| build(args))) {
        Ok(Ok(inner)) => {
            let name = catch_unwind(AssertUnwindSafe(|| inner.name().to_string()))
                .unwrap_or_else(|_| builder.to_string());
            Ok(Box::new(Guarded {
                inner,
                name,
                plugin: plugin_path(krate),
            }))
        }
        Ok(Err(e)) => Err(e),
        Err(p) => Err(Error::Plugin {
            path: plugin_path(krate),
            message: format!(
                "{} panicked while building layer {}: {}",
                describe_builder(wrapper, builder),
                args.layer_idx,
                panic_message(p.as_ref())
            ),
        }),
    }
}

/// Wraps the host's registrar: refuses specs whose builder is not guarded
/// against panics (see [`guarded_build!`](crate::guarded_build)).
struct GuardingRegistrar<'a> {
    host: &'a mut dyn Registrar,
}

impl Registrar for GuardingRegistrar<'_> {
    fn add(&mut self, spec: MixerSpec) -> Result<()> {
        if !note_guarded_spec(spec.build, spec.name) {
            return Err(Error::Plugin {
                path: self.host.plugin_path().to_path_buf(),
                message: format!(
                    "mixer `{}`: its builder is not guarded against panics; build the spec with \
                     `build: lrnnx_framework::guarded_build!(your_build_fn)`",
                    spec.name
                ),
            });
        }
        self.host.add(spec)
    }

    fn plugin_path(&self) -> &Path {
        self.host.plugin_path()
    }
}

/// A plugin's mixer with every call guarded against panics (built inside the plugin).
#[derive(Debug)]
struct Guarded {
    inner: Box<dyn Mixer>,
    /// The inner mixer's name, for messages.
    name: String,
    plugin: PathBuf,
}

impl Guarded {
    fn call<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
            Err(Error::Plugin {
                path: self.plugin.clone(),
                message: format!(
                    "mixer `{}` panicked in {what}: {}",
                    self.name,
                    panic_message(p.as_ref())
                ),
            })
        })
    }

    fn lti(&self) -> Result<&dyn Lti> {
        self.inner
            .as_lti()
            .ok_or_else(|| Error::Config(format!("mixer `{}` is not LTI", self.name)))
    }

    fn ltv(&self) -> Result<&dyn Ltv> {
        self.inner
            .as_ltv()
            .ok_or_else(|| Error::Config(format!("mixer `{}` is not LTV", self.name)))
    }
}

impl Mixer for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn config(&self) -> &dyn MixerConfig {
        self.inner.config()
    }

    fn forward(&self, x: &Tensor, opts: &ForwardOpts) -> Result<Tensor> {
        self.call("forward", || self.inner.forward(x, opts))
    }

    fn step(&self, x: &Tensor, state: &mut MixerState, opts: &StepOpts) -> Result<Tensor> {
        self.call("step", || self.inner.step(x, state, opts))
    }

    fn prefill(&self, x: &Tensor, state: &mut MixerState, opts: &ForwardOpts) -> Result<Tensor> {
        self.call("prefill", || self.inner.prefill(x, state, opts))
    }

    fn init_state(
        &self,
        batch: usize,
        max_seqlen: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<MixerState> {
        self.call("init_state", || {
            self.inner.init_state(batch, max_seqlen, dtype, device)
        })
    }

    fn family(&self) -> Family {
        self.inner.family()
    }

    fn as_lti(&self) -> Option<&dyn Lti> {
        self.inner.as_lti().map(|_| self as &dyn Lti)
    }

    fn as_ltv(&self) -> Option<&dyn Ltv> {
        self.inner.as_ltv().map(|_| self as &dyn Ltv)
    }
}

impl Lti for Guarded {
    fn kernel(&self, len: usize) -> Result<Tensor> {
        self.call("kernel", || self.lti()?.kernel(len))
    }

    fn discretization(&self) -> Discretization {
        self.lti()
            .map(|l| l.discretization())
            .unwrap_or(Discretization::None)
    }
}

impl Ltv for Guarded {
    fn discretization(&self) -> Discretization {
        self.ltv()
            .map(|l| l.discretization())
            .unwrap_or(Discretization::None)
    }

    fn supports_events(&self) -> bool {
        self.ltv().map(|l| l.supports_events()).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::STATUS_OK;
    use crate::ParamStore;

    /// A host-side registrar that keeps what it is given.
    struct Collect {
        path: PathBuf,
        specs: Vec<MixerSpec>,
    }

    impl Registrar for Collect {
        fn add(&mut self, spec: MixerSpec) -> Result<()> {
            self.specs.push(spec);
            Ok(())
        }
        fn plugin_path(&self) -> &Path {
            &self.path
        }
    }

    /// An identity mixer; panics in `forward` when told to.
    #[derive(Debug)]
    struct Echo {
        panic_in_forward: bool,
    }

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct EchoConfig {}

    #[typetag::serde(name = "GuestTestEcho")]
    impl MixerConfig for EchoConfig {}

    impl Mixer for Echo {
        fn name(&self) -> &str {
            "Echo"
        }
        fn config(&self) -> &dyn MixerConfig {
            &EchoConfig {}
        }
        fn forward(&self, x: &Tensor, _: &ForwardOpts) -> Result<Tensor> {
            assert!(!self.panic_in_forward, "echo forward exploded");
            Ok(x.clone())
        }
        fn step(&self, x: &Tensor, _: &mut MixerState, _: &StepOpts) -> Result<Tensor> {
            Ok(x.clone())
        }
        fn init_state(&self, _: usize, _: usize, _: DType, _: &Device) -> Result<MixerState> {
            Ok(MixerState::new())
        }
        fn family(&self) -> Family {
            Family::Other
        }
    }

    fn build_echo(_: &BuildArgs) -> Result<Box<dyn Mixer>> {
        Ok(Box::new(Echo {
            panic_in_forward: false,
        }))
    }

    fn build_echo_panicking_in_forward(_: &BuildArgs) -> Result<Box<dyn Mixer>> {
        Ok(Box::new(Echo {
            panic_in_forward: true,
        }))
    }

    fn build_panics(_: &BuildArgs) -> Result<Box<dyn Mixer>> {
        panic!("guest builder exploded")
    }

    fn spec(name: &'static str, build: BuildFn) -> MixerSpec {
        MixerSpec {
            name,
            aliases: &[],
            family: Family::Other,
            summary: "guest test",
            build,
            default_config: || serde_json::json!({}),
            source: "guest-test",
        }
    }

    fn args(layer_idx: usize, store: &std::sync::Arc<ParamStore>) -> BuildArgs {
        BuildArgs {
            d_model: 2,
            d_state: 1,
            layer_idx,
            kwargs: Default::default(),
            params: store.builder(),
        }
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn register_many(host: &mut dyn Registrar) -> Result<()> {
        // More than ABI v1's 32 slots, through one shared wrapper...
        let shared = crate::guarded_build!(build_echo);
        for i in 0..40 {
            host.add(spec(leak(format!("GuestEcho{i}")), shared))?;
        }
        // ... and through wrappers of their own.
        host.add(spec("GuestPanicky", crate::guarded_build!(build_panics)))?;
        host.add(spec(
            "GuestPanickyForward",
            crate::guarded_build!(build_echo_panicking_in_forward),
        ))
    }

    #[test]
    fn any_number_of_guarded_mixers_register_build_and_catch_panics() {
        let mut host = Collect {
            path: "/in/process/libguest.so".into(),
            specs: Vec::new(),
        };
        let status = run_registration(&mut host, register_many);
        assert_eq!(status.code, STATUS_OK);
        assert_eq!(host.specs.len(), 42);
        let store = ParamStore::init(0, DType::F32, &Device::Cpu);
        let x = Tensor::new(&[[[1f32, -2.0]]], &Device::Cpu).unwrap();
        for s in &host.specs[..40] {
            let m = (s.build)(&args(0, &store)).unwrap();
            let y = m.forward(&x, &ForwardOpts::default()).unwrap();
            assert_eq!(y.to_vec3::<f32>().unwrap(), x.to_vec3::<f32>().unwrap());
        }
        let e = (host.specs[40].build)(&args(5, &store)).unwrap_err();
        assert!(matches!(e, Error::Plugin { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("/in/process/libguest.so")
                && e.contains("mixer `GuestPanicky`")
                && e.contains("panicked while building layer 5")
                && e.contains("guest builder exploded"),
            "{e}"
        );
        let m = (host.specs[41].build)(&args(0, &store)).unwrap();
        let e = m
            .forward(&x, &ForwardOpts::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mixer `Echo` panicked in forward") && e.contains("echo forward exploded"),
            "{e}"
        );
    }

    fn register_bare(host: &mut dyn Registrar) -> Result<()> {
        host.add(spec("GuestBare", build_echo))
    }

    #[test]
    fn a_spec_with_an_unguarded_builder_is_refused() {
        let mut host = Collect {
            path: "/in/process/libbare.so".into(),
            specs: Vec::new(),
        };
        let status = run_registration(&mut host, register_bare);
        assert_eq!(status.code, crate::plugin::STATUS_ERROR);
        assert!(host.specs.is_empty());
        // SAFETY: a CString run_registration leaked for the caller.
        let message = unsafe { CString::from_raw(status.message) }
            .to_string_lossy()
            .into_owned();
        assert!(
            message.contains("`GuestBare`")
                && message.contains("not guarded")
                && message.contains("guarded_build!"),
            "{message}"
        );
    }
}
