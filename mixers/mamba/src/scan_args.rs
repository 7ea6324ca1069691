//! The inputs of the selective scan once the projections have run, as the
//! device path, the GPU kernel and the plain reference take them.

use candle_core::{Result, Tensor};

use crate::cpu::recurrence::{Rule, LANES};

/// `uz (B, L, 2D)` = `[u | z]`, `delta` and `dta (B, L, D)` (equal outside
/// event mode), `xdbl (B, L, R + 2N)` = `[dt_low | B | C]`, `a = -exp(A_log)
/// (D, N)`, the skip `(D)`, the initial state `h0 (B, ceil(D/16), N, 16)`
/// (the CPU kernels' lane layout) and the discretization rule.
#[derive(Debug, Clone, Copy)]
pub struct ScanArgs<'a> {
    /// `[u | z]` `(B, L, 2D)`.
    pub uz: &'a Tensor,
    /// `softplus(dt)` `(B, L, D)`.
    pub delta: &'a Tensor,
    /// The step of `Abar` `(B, L, D)`: `delta`, or the event-mode one.
    pub dta: &'a Tensor,
    /// x_proj's output `[dt_low | B | C]` `(B, L, R + 2N)`.
    pub xdbl: &'a Tensor,
    /// `A = -exp(A_log)` `(D, N)`.
    pub a: &'a Tensor,
    /// The skip `D` `(D)`.
    pub skip: &'a Tensor,
    /// The initial state `(B, ceil(D/16), N, 16)`.
    pub h0: &'a Tensor,
    /// The discretization.
    pub rule: Rule,
}

/// The sizes of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSizes {
    /// Batch.
    pub b: usize,
    /// Positions.
    pub l: usize,
    /// Channels (d_inner).
    pub d: usize,
    /// State size.
    pub n: usize,
    /// Step rank (x_proj's first `R` outputs).
    pub r: usize,
}

impl ScanSizes {
    /// The state's shape `(B, ceil(D/16), N, 16)`.
    pub fn state(&self) -> [usize; 4] {
        [self.b, self.d.div_ceil(LANES), self.n, LANES]
    }
}

impl ScanArgs<'_> {
    /// Checks every shape against `uz` and `a`; the error lists them all.
    pub fn sizes(&self) -> Result<ScanSizes> {
        let (b, l, d2) = self.uz.dims3()?;
        let (d, n) = self.a.dims2()?;
        let r = self.xdbl.dim(2)?.saturating_sub(2 * n);
        let s = ScanSizes { b, l, d, n, r };
        if d2 != 2 * d
            || self.delta.dims() != [b, l, d]
            || self.dta.dims() != [b, l, d]
            || self.xdbl.dims() != [b, l, r + 2 * n]
            || self.skip.dims() != [d]
            || self.h0.dims() != s.state()
        {
            candle_core::bail!(
                "Mamba selective scan: expected uz (B, L, 2D), delta and dtA (B, L, D), xdbl (B, L, R + 2N), A (D, N), D (D), h0 {:?}; found uz {:?}, delta {:?}, dtA {:?}, xdbl {:?}, A {:?}, D {:?}, h0 {:?}",
                s.state(),
                self.uz.dims(),
                self.delta.dims(),
                self.dta.dims(),
                self.xdbl.dims(),
                self.a.dims(),
                self.skip.dims(),
                self.h0.dims()
            );
        }
        Ok(s)
    }
}
