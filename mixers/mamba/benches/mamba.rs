//! Mamba on the CPU at B=8, L=2048, d_model=256, d_state=16 (expand 2, D=512):
//! forward, forward+backward, step; plus the fused ops alone.

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lrnnx_framework::{ForwardOpts, Mixer, ParamStore, StepOpts};
use lrnnx_mamba::{Mamba, MambaConfig, Rule};

const B: usize = 8;
const L: usize = 2048;
const H: usize = 256;
const N: usize = 16;

fn layer() -> Mamba {
    let store = ParamStore::init(0, DType::F32, &Device::Cpu);
    Mamba::new(H, MambaConfig::new(N), &store.builder()).expect("valid config")
}

/// With `LRNNX_BENCH_MALLOPT=1`, makes glibc serve large blocks from its heap
/// and keep freed memory there (`M_MMAP_MAX = 0`, `M_TRIM_THRESHOLD` max), so
/// that the tens of MB each op allocates are reused instead of page-faulted in
/// afresh on every call: the figure without that allocator overhead (about a
/// third of the time here). By default the process allocator is left alone.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("LRNNX_BENCH_MALLOPT").is_some() {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        // SAFETY: glibc's mallopt with valid parameters, before any threads allocate.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

fn bench(c: &mut Criterion) {
    tune_allocator();
    let m = layer();
    let x = Tensor::randn(0f32, 1.0, (B, L, H), &Device::Cpu).expect("input");
    let mut g = c.benchmark_group("mamba");
    g.sample_size(10);
    g.throughput(Throughput::Elements((B * L) as u64));
    g.bench_function("forward B8 L2048 H256 N16", |bench| {
        bench.iter(|| m.forward(&x, &ForwardOpts::default()).expect("forward"))
    });
    let xv = Var::from_tensor(&x).expect("var");
    g.bench_function("forward+backward B8 L2048 H256 N16", |bench| {
        bench.iter(|| {
            let y = m
                .forward(xv.as_tensor(), &ForwardOpts::default())
                .expect("forward");
            y.sqr()
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward")
        })
    });
    // The fused scan op alone (x_proj + scan + gate; D = 512, R = 16).
    let d = 2 * H;
    let r = H / 16;
    let uz = Tensor::randn(0f32, 1.0, (B, L, 2 * d), &Device::Cpu).expect("uz");
    let xw = (Tensor::randn(0f32, 1.0, (r + 2 * N, d), &Device::Cpu).expect("x_proj") * 0.05)
        .expect("scale");
    let pack = (Tensor::randn(0f32, 1.0, (d, N + r + 3), &Device::Cpu).expect("pack") * 0.3)
        .expect("scale");
    g.bench_function("scan op forward", |bench| {
        bench.iter(|| {
            lrnnx_mamba::selective_scan(&uz, &xw, &pack, None, Rule::Mamba, N).expect("scan")
        })
    });
    let uzv = Var::from_tensor(&uz).expect("var");
    g.bench_function("scan op forward+backward", |bench| {
        bench.iter(|| {
            lrnnx_mamba::selective_scan(uzv.as_tensor(), &xw, &pack, None, Rule::Mamba, N)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("scan")
        })
    });
    g.throughput(Throughput::Elements(B as u64));
    let mut state = m.init_state(B, L, DType::F32, &Device::Cpu).expect("state");
    let xt = x
        .narrow(1, 0, 1)
        .and_then(|t| t.squeeze(1))
        .expect("step input");
    g.bench_function("step B8 H256 N16", |bench| {
        bench.iter(|| m.step(&xt, &mut state, &StepOpts::default()).expect("step"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
