//! The sizes of one flash-attention call and the strided `(B, H, L, d)`
//! views its kernels read.

use candle_core::{Layout, Result};

/// Queries per block of the kernels.
pub(crate) const QUERY_BLOCK: usize = 128;
/// Keys per block of the kernels.
pub(crate) const KEY_BLOCK: usize = 128;

/// Sizes and masking of one call: `q (B, h, Lq, d)` over `k`, `v (B, hkv, Lk, d)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Dims {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub scale: f64,
    /// Bottom-right aligned causal mask: query `i` sees keys `j <= i + Lk - Lq`.
    pub causal: bool,
}

impl Dims {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.h / self.hkv
    }

    /// Keys query `i` sees: `0..keys_for(i)`.
    #[inline(always)]
    pub fn keys_for(&self, i: usize) -> usize {
        if self.causal {
            (i + 1 + self.lk - self.lq).min(self.lk)
        } else {
            self.lk
        }
    }

    /// The first query that sees key `j` (`Lq` if none does).
    #[inline(always)]
    pub fn first_query_for(&self, j: usize) -> usize {
        if self.causal {
            (j + self.lq).saturating_sub(self.lk).min(self.lq)
        } else {
            0
        }
    }

    /// Query blocks per `(batch, head)`.
    pub fn query_blocks(&self) -> usize {
        self.lq.div_ceil(QUERY_BLOCK)
    }

    /// What task `task` of a `(batch, head, query block)` split covers.
    #[inline(always)]
    pub fn query_block(&self, task: usize) -> QueryBlock {
        let (bh, qb) = (task / self.query_blocks(), task % self.query_blocks());
        let (b, h) = (bh / self.h, bh % self.h);
        let q0 = qb * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(self.lq - q0);
        QueryBlock {
            b,
            h,
            kh: h / self.group(),
            q0,
            rows,
            kend: self.keys_for(q0 + rows - 1),
        }
    }

    /// Key blocks per `(batch, KV head)`.
    pub fn key_blocks(&self) -> usize {
        self.lk.div_ceil(KEY_BLOCK)
    }

    /// Elements of the context `o (B, Lq, h, d)`.
    pub fn o_len(&self) -> usize {
        self.b * self.lq * self.h * self.d
    }

    /// Elements of the log-sum-exp of the scores `(B, h, Lq)`.
    pub fn lse_len(&self) -> usize {
        self.b * self.h * self.lq
    }

    /// Where row `(b, i, h)` of `o (B, Lq, h, d)` starts.
    #[inline(always)]
    pub fn o_row(&self, b: usize, i: usize, h: usize) -> usize {
        ((b * self.lq + i) * self.h + h) * self.d
    }

    /// Where `lse[b, h, i]` sits, after the context.
    #[inline(always)]
    pub fn lse_at(&self, b: usize, h: usize, i: usize) -> usize {
        self.o_len() + (b * self.h + h) * self.lq + i
    }
}

/// One `(batch, head, query block)` task: queries `q0..q0 + rows` of head
/// `h` (reading KV head `kh`) of batch row `b`, which see keys `0..kend`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueryBlock {
    pub b: usize,
    pub h: usize,
    pub kh: usize,
    pub q0: usize,
    pub rows: usize,
    pub kend: usize,
}

/// Element offsets of a `(B, H, L, d)` tensor whose last dim has unit stride.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadsView {
    pub start: usize,
    pub batch: usize,
    pub head: usize,
    pub pos: usize,
}

impl HeadsView {
    /// The view of `layout` (dims `(B, H, L, d)`), or an error naming `what`.
    pub fn of(layout: &Layout, what: &str) -> Result<Self> {
        let dims = layout.dims();
        let stride = layout.stride();
        if dims.len() != 4 || (stride[3] != 1 && dims[3] > 1) {
            candle_core::bail!(
                "flash attention {what}: expected (B, H, L, d) with unit stride along d, found dims {dims:?} strides {stride:?}"
            );
        }
        Ok(Self {
            start: layout.start_offset(),
            batch: stride[0],
            head: stride[1],
            pos: stride[2],
        })
    }

    /// Where row `(b, h, l)` starts.
    #[inline(always)]
    pub fn at(&self, b: usize, h: usize, l: usize) -> usize {
        self.start + b * self.batch + h * self.head + l * self.pos
    }
}
