//! Layer rows of `lrnnx bench`: each mixer's forward, forward+backward and
//! decoding step at the benchmark shape, in one precision.

use candle_core::{DType, Device, Tensor};
use lrnnx::{BuildArgs, ForwardOpts, Mixer, ParamStore, Precision, Registry, StepOpts};
use serde_json::json;

use super::{time, Args};

/// The kwargs a mixer is benchmarked with (lrnnx's protocol: causal attention
/// with 4 heads; everything else at its defaults).
fn bench_kwargs(name: &str) -> serde_json::Map<String, serde_json::Value> {
    match name {
        "attn" => serde_json::from_str(r#"{"num_heads": 4, "causal": true}"#).unwrap_or_default(),
        // lrnnx gives these no default: the LTI S5 its discretization,
        // Centaurus its sub-state size.
        "S5" => serde_json::from_str(r#"{"discretization": "zoh"}"#).unwrap_or_default(),
        "Centaurus" => serde_json::from_str(r#"{"sub_state_dim": 2}"#).unwrap_or_default(),
        _ => Default::default(),
    }
}

/// Times `name` at `(a.batch, a.seqlen, a.d_model)` with f32 parameters and
/// activations in `precision.compute`; prints the row and returns it as JSON.
pub fn bench_layer(
    dev: &Device,
    a: &Args,
    name: &str,
    precision: Precision,
) -> anyhow::Result<serde_json::Value> {
    let (b, l, h) = (a.batch, a.seqlen, a.d_model);
    let store = ParamStore::init(0, precision.params, dev);
    let args = BuildArgs {
        d_model: h,
        d_state: if name == "Mamba" {
            a.mamba_d_state
        } else {
            a.d_state
        },
        layer_idx: 0,
        kwargs: bench_kwargs(name),
        params: store.builder(),
    };
    let m: Box<dyn Mixer> = Registry::build(name, &args)?;
    let dtype = precision.compute;
    let x = Tensor::randn(0f32, 1.0, (b, l, h), dev)?.to_dtype(dtype)?;
    let opts = ForwardOpts::default();
    let t_fwd = time(dev, a.reps, || {
        // No backward follows: forward-only kernels may run.
        let _ = lrnnx_kernels::portable::without_grad(|| m.forward(&x, &opts))?;
        Ok(())
    })?;
    let t_bwd = time(dev, a.reps, || {
        let y = m.forward(&x, &opts)?;
        let _ = y.to_dtype(DType::F32)?.sum_all()?.backward()?;
        Ok(())
    })?;
    let mut st = m.init_state(b, l + 8 * a.reps + 16, dtype, dev)?;
    if name == "attn" {
        // Decode against a cache already holding most of the sequence.
        let _ = m.prefill(&x.narrow(1, 0, l.min(1400))?, &mut st, &opts)?;
    }
    let xt = x.narrow(1, 0, 1)?.squeeze(1)?;
    let t_step = time(dev, a.reps, || {
        let _ = m.step(&xt, &mut st, &StepOpts::default())?;
        Ok(())
    })?;
    let tokens = (b * l) as f64;
    println!(
        "{:<12} {:<5} fwd {:>9.3} ms ({:>9.0} tok/s)  fwd+bwd {:>9.3} ms  step {:>8.1} us (batch {b})",
        name,
        format!("{dtype:?}").to_lowercase(),
        t_fwd * 1e3,
        tokens / t_fwd,
        t_bwd * 1e3,
        t_step * 1e6
    );
    Ok(json!({
        "name": name,
        "dtype": format!("{dtype:?}").to_lowercase(),
        "params_dtype": format!("{:?}", precision.params).to_lowercase(),
        "forward_ms": t_fwd * 1e3,
        "forward_tokens_per_s": tokens / t_fwd,
        "forward_backward_ms": t_bwd * 1e3,
        "step_us": t_step * 1e6,
    }))
}

#[cfg(test)]
mod tests {
    use super::bench_kwargs;
    use candle_core::{DType, Device};
    use lrnnx::{BuildArgs, ParamStore, Registry};

    /// Every mixer of the default bench list builds from its bench kwargs.
    #[test]
    fn every_default_bench_mixer_builds() {
        lrnnx::init();
        for name in super::super::DEFAULT_MIXERS.split(',') {
            let store = ParamStore::init(0, DType::F32, &Device::Cpu);
            let args = BuildArgs {
                d_model: 16,
                d_state: 8,
                layer_idx: 0,
                kwargs: bench_kwargs(name),
                params: store.builder(),
            };
            if let Err(e) = Registry::build(name, &args) {
                panic!("{name}: {e}");
            }
        }
    }
}
