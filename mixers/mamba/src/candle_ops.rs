//! Mamba from candle ops, on any device: candle ops for the projections, the
//! conv and softplus, and for the recurrence either the CUDA selective-scan
//! kernels (`crate::cuda`, feature `cuda`: forward and backward) or the
//! differentiable candle-ops scan (`crate::portable_scan`: the CPU inside
//! `with_portable`, which is how this path is tested without a GPU, and the
//! reference the CUDA backward is tested against). On the CPU in f32/f64 the fused ops of `crate::cpu` run instead.
//! One function serves forward, prefill and step, since each is "run these
//! positions from this state". Compute runs in the parameters' dtype (bf16
//! inputs are widened to it, the outputs cast back).

use candle_core::{Tensor, D};
use lrnnx_framework::{Error, Result};

use crate::cpu::recurrence::LANES;
use crate::portable_scan::selective_scan_portable;
use crate::scan_args::ScanArgs;
use crate::Mamba;
use lrnnx_framework::layers::project_linear as project;

/// What a run on the device returns.
pub(crate) struct CandleOpsRun {
    /// `out_proj`'s output `(B, L, d_model)`.
    pub out: Tensor,
    /// The last `d_conv` pre-conv inputs `(B, D, d_conv)`.
    pub conv_state: Tensor,
    /// The last state `(B, ceil(D / 16), N, 16)`.
    pub h: Tensor,
}

/// `softplus(x) = max(x, 0) + ln(1 + e^-|x|)`, without overflow.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    Ok((x.relu()? + tail)?)
}

impl Mamba {
    /// Runs `x (B, L, d_model)`, `L > 0`, from `state = (conv_state, h)` (zeros
    /// when `None`), with event timesteps `its (B, L)` if given.
    pub(crate) fn run_candle_ops(
        &self,
        x: &Tensor,
        its: Option<&Tensor>,
        state: Option<(&Tensor, &Tensor)>,
        decoding: bool,
    ) -> Result<CandleOpsRun> {
        let (b, l, _) = x.dims3()?;
        let (d, w, n) = (self.d_inner, self.cfg.d_conv, self.cfg.d_state);
        let dev = x.device();
        let dtype = self.dtype();
        let xz = project(&x.to_dtype(dtype)?, &self.in_proj)?;
        let (xs, z) = (xz.narrow(2, 0, d)?, xz.narrow(2, d, d)?);
        // The conv over [last w-1 inputs | xs]; the new conv state is the last w inputs.
        let history = match state {
            Some((conv, _)) => conv.narrow(2, 1, w - 1)?.transpose(1, 2)?,
            None => Tensor::zeros((b, w - 1, d), dtype, dev)?,
        };
        let all = Tensor::cat(&[&history, &xs], 1)?;
        let conv_state = all.narrow(1, l - 1, w)?.transpose(1, 2)?.contiguous()?;
        let weight = self.conv_w.reshape((d, w))?;
        let mut conv = match &self.conv_b {
            Some(bias) => bias
                .reshape((1, 1, d))?
                .broadcast_as((b, l, d))?
                .contiguous()?,
            None => Tensor::zeros((b, l, d), dtype, dev)?,
        };
        for k in 0..w {
            let tap = weight.narrow(1, k, 1)?.reshape((1, 1, d))?;
            conv = (conv + all.narrow(1, k, l)?.broadcast_mul(&tap)?)?;
        }
        let u = candle_nn::ops::silu(&conv)?;
        let uz = Tensor::cat(&[&u, &z], D::Minus1)?;
        let xdbl = u
            .reshape((b * l, d))?
            .matmul(&self.x_proj.t()?)?
            .reshape((b, l, ()))?;
        let dt_low = xdbl.narrow(2, 0, self.rank)?.contiguous()?;
        let dt = dt_low
            .reshape((b * l, self.rank))?
            .matmul(&self.dt_w.t()?)?
            .broadcast_add(&self.dt_b)?;
        let delta = softplus(&dt)?.reshape((b, l, d))?;
        let dta = match its {
            Some(ts) => ts
                .to_dtype(dtype)?
                .reshape((b, l, 1))?
                .broadcast_mul(&softplus(&self.dta_b)?.reshape((1, 1, d))?)?,
            None => delta.clone(),
        };
        let a = self.a_log.exp()?.neg()?;
        let h0 = match state {
            Some((_, h)) => h.clone(),
            None => Tensor::zeros((b, d.div_ceil(LANES), n, LANES), dtype, dev)?,
        };
        let (y, h) = scan(
            &ScanArgs {
                uz: &uz,
                delta: &delta,
                dta: &dta,
                xdbl: &xdbl,
                a: &a,
                skip: &self.d,
                h0: &h0,
                rule: self.rule,
            },
            decoding,
        )?;
        Ok(CandleOpsRun {
            out: project(&y, &self.out_proj)?,
            conv_state,
            h,
        })
    }
}

/// Whether any input of the scan is in an autograd graph.
#[cfg(feature = "cuda")]
fn tracks_grad(a: &ScanArgs) -> bool {
    [a.uz, a.delta, a.dta, a.xdbl, a.a, a.skip, a.h0]
        .iter()
        .any(|t| t.track_op())
}

/// The scan on the tensors' device. On a GPU: the gradient-free CUDA op for
/// decoding, for forwards whose inputs track no gradient and inside
/// [`lrnnx_kernels::portable::without_grad`], else the CUDA op with a backward
/// kernel. On the CPU (inside `with_portable`): the differentiable candle-ops
/// scan ([`selective_scan_portable`]).
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn scan(args: &ScanArgs, decoding: bool) -> Result<(Tensor, Tensor)> {
    let dev = args.uz.device();
    if !dev.is_cpu() && !dev.is_cuda() {
        return Err(unsupported(args.uz));
    }
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        if decoding || lrnnx_kernels::portable::grad_disabled() || !tracks_grad(args) {
            return Ok(crate::cuda::selective_scan_gpu(args)?);
        }
        return Ok(crate::cuda::selective_scan_gpu_train(args)?);
    }
    Ok(selective_scan_portable(args)?)
}

fn unsupported(t: &Tensor) -> Error {
    Error::Config(format!(
        "Mamba runs on the CPU, and on CUDA when built with feature `cuda`; found a tensor on {:?}",
        t.device().location()
    ))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use lrnnx_framework::{Discretization, ForwardOpts, Init, Mixer, ParamStore};

    use crate::{Mamba, MambaConfig};
    use lrnnx_testing::max_rel;

    /// The device path (candle ops + plain scan, here on the CPU) against the
    /// fused CPU kernels: whole sequences, a split prefill and single steps,
    /// every rule, with and without event timesteps, channels not a multiple of 16.
    #[test]
    fn candle_ops_path_equals_the_fused_cpu_path() {
        let (b, l, h, split) = (2, 13, 12, 6);
        for (i, rule) in [
            Discretization::Mamba,
            Discretization::Zoh,
            Discretization::Bilinear,
            Discretization::Dirac,
        ]
        .into_iter()
        .enumerate()
        {
            for events in [false, true] {
                let store = ParamStore::init(i as u64, DType::F64, &Device::Cpu);
                let mut cfg = MambaConfig::new(5);
                cfg.discretization = rule;
                let m = Mamba::new(h, cfg, &store.builder()).expect("layer");
                let draw = |shape: &[usize], name: &str, init: Init| {
                    ParamStore::init(100 + i as u64, DType::F64, &Device::Cpu)
                        .builder()
                        .get(shape, name, init)
                        .expect("random input")
                };
                let x = draw(
                    &[b, l, h],
                    "x",
                    Init::Normal {
                        mean: 0.0,
                        std: 1.0,
                    },
                );
                let its = events.then(|| draw(&[b, l], "its", Init::Uniform { lo: 0.2, hi: 2.2 }));
                let opts = ForwardOpts {
                    integration_timesteps: its.clone(),
                    lengths: None,
                };
                let want = m.forward(&x, &opts).expect("fused forward");
                let whole = m
                    .run_candle_ops(&x, its.as_ref(), None, false)
                    .expect("device path");
                let e = max_rel(&whole.out, &want);
                assert!(e < 1e-12, "{rule:?} events={events}: forward {e:e}");

                // A prefill of `split` positions, the rest one step at a time.
                let part = |t0: usize, n: usize| -> (Tensor, Option<Tensor>) {
                    let ts = its.as_ref().map(|t| t.narrow(1, t0, n).expect("timesteps"));
                    (x.narrow(1, t0, n).expect("positions"), ts)
                };
                let (x0, t0) = part(0, split);
                let mut run = m
                    .run_candle_ops(&x0, t0.as_ref(), None, true)
                    .expect("prefill");
                let mut outs = vec![run.out.clone()];
                for t in split..l {
                    let (xt, tt) = part(t, 1);
                    run = m
                        .run_candle_ops(&xt, tt.as_ref(), Some((&run.conv_state, &run.h)), true)
                        .expect("step");
                    outs.push(run.out.clone());
                }
                let stepped = Tensor::cat(&outs, 1).expect("cat");
                let e = max_rel(&stepped, &want);
                assert!(e < 1e-12, "{rule:?} events={events}: prefill + steps {e:e}");
                // The states equal the fused prefill's.
                let mut state = m.init_state(b, l, DType::F64, &Device::Cpu).expect("state");
                m.prefill(&x, &mut state, &opts).expect("fused prefill");
                for (name, got) in [("conv_state", &run.conv_state), ("lrnn_state", &run.h)] {
                    let e = max_rel(got, state.get(name).expect("state entry"));
                    assert!(e < 1e-12, "{rule:?} events={events}: {name} {e:e}");
                }
            }
        }
    }
}
