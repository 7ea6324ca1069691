//! The plugin side: this code runs in the plugin's own copy of the
//! framework. [`export_plugin!`](crate::export_plugin) defines the exported
//! symbols; every mixer the plugin registers is wrapped so that its panics
//! come back to the host as [`Error::Plugin`]s.

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

/// Most mixers one plugin can register (each gets a panic-catching builder slot).
pub const MAX_MIXERS_PER_PLUGIN: usize = 32;

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
/// every spec's builder is wrapped so that its mixers catch their panics too.
#[doc(hidden)]
pub fn run_registration(host: &mut dyn Registrar, register: RegisterFn) -> PluginStatus {
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

/// The builders of the mixers this copy of the framework registered, by slot.
struct Slot {
    build: BuildFn,
    name: &'static str,
    plugin: PathBuf,
}

static SLOTS: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

/// Wraps the host's registrar: each spec's builder goes into a slot and the
/// host receives a trampoline that calls it with panics caught.
struct GuardingRegistrar<'a> {
    host: &'a mut dyn Registrar,
}

impl Registrar for GuardingRegistrar<'_> {
    fn add(&mut self, mut spec: MixerSpec) -> Result<()> {
        let plugin = self.host.plugin_path().to_path_buf();
        let slot = {
            let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
            if slots.len() >= MAX_MIXERS_PER_PLUGIN {
                return Err(Error::Plugin {
                    path: plugin,
                    message: format!(
                        "a plugin registers at most {MAX_MIXERS_PER_PLUGIN} mixers; `{}` is one too many",
                        spec.name
                    ),
                });
            }
            slots.push(Slot {
                build: spec.build,
                name: spec.name,
                plugin,
            });
            slots.len() - 1
        };
        spec.build = TRAMPOLINES[slot];
        self.host.add(spec)
    }

    fn plugin_path(&self) -> &Path {
        self.host.plugin_path()
    }
}

fn guarded_build(slot: usize, args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    let (build, name, plugin) = {
        let slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        let s = slots.get(slot).ok_or_else(|| {
            Error::Config(format!("plugin builder slot {slot} is not registered"))
        })?;
        (s.build, s.name, s.plugin.clone())
    };
    match catch_unwind(AssertUnwindSafe(|| build(args))) {
        Ok(Ok(inner)) => Ok(Box::new(Guarded {
            inner,
            name,
            plugin,
        })),
        Ok(Err(e)) => Err(e),
        Err(p) => Err(Error::Plugin {
            path: plugin,
            message: format!(
                "mixer `{name}` panicked while building layer {}: {}",
                args.layer_idx,
                panic_message(p.as_ref())
            ),
        }),
    }
}

fn trampoline<const SLOT: usize>(args: &BuildArgs) -> Result<Box<dyn Mixer>> {
    guarded_build(SLOT, args)
}

macro_rules! trampolines {
    ($($i:literal)*) => { [$(trampoline::<$i> as BuildFn),*] };
}

const TRAMPOLINES: [BuildFn; MAX_MIXERS_PER_PLUGIN] = trampolines!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
);

/// A plugin's mixer with every call guarded against panics (built inside the plugin).
#[derive(Debug)]
struct Guarded {
    inner: Box<dyn Mixer>,
    name: &'static str,
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
