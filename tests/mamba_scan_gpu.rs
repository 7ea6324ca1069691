//! Mamba's CUDA selective scan with its backward kernel against the
//! candle-ops scan on the CPU (differentiated by candle's autograd): outputs,
//! last state and the gradient of every input, for every discretization,
//! with and without event timesteps, from a random start state, at shapes
//! with L = 1, L not a multiple of the kernel's 512-position chunk and
//! several chunks, channels not a multiple of 16 and state sizes between the
//! compiled ones. Needs `--features cuda` and a GPU; says it is skipped otherwise.

#[test]
fn cuda_scan_and_its_gradients_equal_the_candle_ops_scan() {
    #[cfg(feature = "cuda")]
    gpu::run();
    #[cfg(not(feature = "cuda"))]
    println!(
        "SKIPPED the CUDA selective scan test: built without `--features cuda` (build with it and run on a GPU machine, see README)"
    );
}

#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::{DType, Device, Tensor, Var};
    use lrnnx_framework::Init;
    use lrnnx_mamba::cuda::selective_scan_gpu_train;
    use lrnnx_mamba::portable_scan::selective_scan_portable;
    use lrnnx_mamba::{Rule, ScanArgs};
    use lrnnx_testing::{draw, max_rel, randn};

    /// `(B, L, D, N, R)`.
    const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
        (1, 1, 3, 4, 2),
        (2, 37, 20, 5, 3),
        (2, 513, 17, 16, 4),
        (1, 1100, 33, 16, 2),
        (1, 70, 16, 33, 1),
    ];

    /// The scan's inputs as leaves of one device.
    struct Inputs {
        uz: Var,
        delta: Var,
        dta: Option<Var>,
        xdbl: Var,
        a: Var,
        skip: Var,
        h0: Var,
    }

    impl Inputs {
        fn random(
            shape: (usize, usize, usize, usize, usize),
            events: bool,
            seed: u64,
            dtype: DType,
        ) -> Self {
            let (b, l, d, n, r) = shape;
            let var = |t: Tensor| Var::from_tensor(&t).expect("a leaf");
            let uniform = |s: &[usize], k: u64, lo: f64, hi: f64| {
                draw(s, seed + k, dtype, Init::Uniform { lo, hi })
            };
            Self {
                uz: var(randn(&[b, l, 2 * d], seed, dtype)),
                delta: var(uniform(&[b, l, d], 1, 0.05, 1.5)),
                dta: events.then(|| var(uniform(&[b, l, d], 2, 0.1, 2.0))),
                xdbl: var((randn(&[b, l, r + 2 * n], seed + 3, dtype) * 0.7).expect("scale")),
                a: var(uniform(&[d, n], 4, -4.0, -0.3)),
                skip: var(randn(&[d], seed + 5, dtype)),
                h0: var((randn(&[b, d.div_ceil(16), n, 16], seed + 6, dtype) * 0.5).expect("scale")),
            }
        }

        fn to(&self, dev: &Device) -> Self {
            let move_to = |v: &Var| {
                Var::from_tensor(&v.as_tensor().to_device(dev).expect("copy")).expect("a leaf")
            };
            Self {
                uz: move_to(&self.uz),
                delta: move_to(&self.delta),
                dta: self.dta.as_ref().map(move_to),
                xdbl: move_to(&self.xdbl),
                a: move_to(&self.a),
                skip: move_to(&self.skip),
                h0: move_to(&self.h0),
            }
        }

        fn leaves(&self) -> Vec<(&'static str, &Var)> {
            let mut v = vec![("uz", &self.uz), ("delta", &self.delta)];
            if let Some(t) = &self.dta {
                v.push(("dtA", t));
            }
            v.extend([
                ("xdbl", &self.xdbl),
                ("A", &self.a),
                ("skip", &self.skip),
                ("h0", &self.h0),
            ]);
            v
        }

        /// `(y, last state, gradient of each leaf)` for the loss `<y, wy> + <h, wh>`.
        fn run(
            &self,
            rule: Rule,
            scan: fn(&ScanArgs) -> candle_core::Result<(Tensor, Tensor)>,
            wy: &Tensor,
            wh: &Tensor,
        ) -> (Tensor, Tensor, Vec<(&'static str, Tensor)>) {
            let args = ScanArgs {
                uz: self.uz.as_tensor(),
                delta: self.delta.as_tensor(),
                dta: self.dta.as_ref().unwrap_or(&self.delta).as_tensor(),
                xdbl: self.xdbl.as_tensor(),
                a: self.a.as_tensor(),
                skip: self.skip.as_tensor(),
                h0: self.h0.as_tensor(),
                rule,
            };
            let (y, h) = scan(&args).expect("the scan");
            let dev = y.device().clone();
            let loss = ((&y * wy.to_device(&dev).expect("copy"))
                .expect("mul")
                .sum_all()
                .expect("sum")
                + (&h * wh.to_device(&dev).expect("copy"))
                    .expect("mul")
                    .sum_all()
                    .expect("sum"))
            .expect("add");
            let grads = loss.backward().expect("backward");
            let g = self
                .leaves()
                .into_iter()
                .map(|(name, v)| {
                    // Absent when the leaf does not reach the loss (delta under the
                    // dirac rule with event timesteps): the gradient is zero.
                    let g = match grads.get(v.as_tensor()) {
                        Some(g) => g.clone(),
                        None => v.as_tensor().zeros_like().expect("zeros"),
                    };
                    (name, g.to_device(&Device::Cpu).expect("copy"))
                })
                .collect();
            (
                y.to_device(&Device::Cpu).expect("copy"),
                h.to_device(&Device::Cpu).expect("copy"),
                g,
            )
        }
    }

    fn compare(dtype: DType, tol: f64, shapes: &[(usize, usize, usize, usize, usize)]) {
        let dev = match Device::new_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                println!("SKIPPED the CUDA selective scan test: no CUDA device ({e})");
                return;
            }
        };
        let mut worst = 0f64;
        for (i, &shape) in shapes.iter().enumerate() {
            for (k, rule) in [Rule::Mamba, Rule::Zoh, Rule::Bilinear, Rule::Dirac]
                .into_iter()
                .enumerate()
            {
                for events in [false, true] {
                    let seed = 1000 * i as u64 + 10 * k as u64 + u64::from(events);
                    let cpu = Inputs::random(shape, events, seed, dtype);
                    let (b, l, d, n, _) = shape;
                    let wy = randn(&[b, l, d], seed + 7, dtype);
                    let wh = randn(&[b, d.div_ceil(16), n, 16], seed + 8, dtype);
                    let (y0, h0, g0) = cpu.run(rule, selective_scan_portable, &wy, &wh);
                    let (y1, h1, g1) = cpu.to(&dev).run(rule, selective_scan_gpu_train, &wy, &wh);
                    let case = format!("{dtype:?} {shape:?} {rule:?} events={events}");
                    let mut errs =
                        vec![("y", max_rel(&y1, &y0)), ("last state", max_rel(&h1, &h0))];
                    for ((name, want), (_, got)) in g0.iter().zip(&g1) {
                        errs.push((name, max_rel(got, want)));
                    }
                    for (name, e) in errs {
                        worst = worst.max(e);
                        assert!(
                            e < tol,
                            "{case}: {name} differs by {e:e} (tolerance {tol:e})"
                        );
                    }
                }
            }
        }
        println!(
            "CUDA selective scan {dtype:?}: worst relative error {worst:e} over {} cases",
            shapes.len() * 8
        );
    }

    pub fn run() {
        // f64: only rounding separates the two (the kernel sums in another order).
        compare(DType::F64, 1e-9, &SHAPES);
        // f32: the device parity tolerance; sums over up to 1100 positions.
        compare(DType::F32, 1e-4, &SHAPES[1..4]);
    }
}
