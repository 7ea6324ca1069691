// Flash attention on CUDA: softmax attention a 64 x 64 tile at a time with
// the online softmax (forward) and from the saved log-sum-exp (backward),
// f32 arithmetic on f32, bf16 or f16 inputs. No Lq x Lk matrix exists.
//
// Layouts (element offsets, unit stride along the head dim):
//   q (B, h, Lq, d), k, v (B, hkv, Lk, d) by (start, batch, head, pos) strides;
//   out = [o (B, Lq, h, d) | lse (B, h, Lq)], f32;
//   backward: dout (B, Lq, h, d) f32, delta (B, h, Lq) f32,
//   grads = [dq (B, Lq, h, d) | dk | dv (B, Lk, hkv, d)], f32.
//
// Every tile product is a 4 x 4 register tile per thread (256 threads cover
// 64 x 64) reading float4s from shared memory: operands whose rows are the
// tile's rows are stored transposed ([DP][PAD]), operands multiplied along
// keys or queries row-major ([64][DP]).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#define TILE 64
#define PAD 68
#define THREADS 256
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

struct View {
  long long start, batch, head, pos;
  __device__ __forceinline__ long long at(int b, int h, int l) const {
    return start + b * batch + h * head + (long long)l * pos;
  }
};

struct Sizes {
  int B, H, HKV, LQ, LK, D, causal;
  float scale;
  __device__ __forceinline__ int group() const { return H / HKV; }
  // Keys query i sees: 0 .. keys_for(i).
  __device__ __forceinline__ int keys_for(int i) const {
    return causal ? min(LK, i + 1 + LK - LQ) : LK;
  }
  __device__ __forceinline__ bool visible(int i, int j) const {
    return i < LQ && j < LK && (!causal || j <= i + LK - LQ);
  }
  __device__ __forceinline__ long long o_row(int b, int i, int h) const {
    return (((long long)b * LQ + i) * H + h) * D;
  }
  __device__ __forceinline__ long long lse_at(int b, int h, int i) const {
    return (long long)B * LQ * H * D + ((long long)b * H + h) * LQ + i;
  }
  __device__ __forceinline__ long long kv_row(int b, int j, int kh) const {
    return (((long long)b * LK + j) * HKV + kh) * D;
  }
};

// Rows r0 .. r0+64 of a (rows, D) matrix with row stride `ld` (offset `at`),
// zero past `rows` and past D: into `dst` transposed ([DP][PAD]) or
// row-major ([64][DP]).
template <typename T, int DP, bool TRANSPOSED>
__device__ __forceinline__ void load_tile(float* dst, const T* src, long long at, long long ld,
                                          int rows, int D) {
  for (int idx = threadIdx.x; idx < TILE * DP; idx += THREADS) {
    int r = idx / DP, c = idx % DP;
    float x = (r < rows && c < D) ? to_f(src[at + r * ld + c]) : 0.f;
    if (TRANSPOSED) dst[c * PAD + r] = x;
    else dst[r * DP + c] = x;
  }
}

// acc[i][j] = sum_k At[k][tr*4+i] * Bt[k][tc*4+j] over k < DP.
template <int DP>
__device__ __forceinline__ void tile_abt(float acc[4][4], const float* At, const float* Bt) {
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
#pragma unroll 8
  for (int k = 0; k < DP; ++k) {
    float4 a = *reinterpret_cast<const float4*>(&At[k * PAD + tr * 4]);
    float4 b = *reinterpret_cast<const float4*>(&Bt[k * PAD + tc * 4]);
    float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// acc[i][c] += sum_j W[j][tr*4+i] * M[j][tc*CO+c] over j < 64, W [64][PAD], M [64][DP].
template <int DP>
__device__ __forceinline__ void tile_acc(float acc[4][DP / 16], const float* W, const float* M) {
  constexpr int CO = DP / 16;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
#pragma unroll 4
  for (int j = 0; j < TILE; ++j) {
    float4 w = *reinterpret_cast<const float4*>(&W[j * PAD + tr * 4]);
    float wv[4] = {w.x, w.y, w.z, w.w};
    float mv[CO];
#pragma unroll
    for (int c = 0; c < CO; ++c) mv[c] = M[j * DP + tc * CO + c];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int c = 0; c < CO; ++c) acc[i][c] = fmaf(wv[i], mv[c], acc[i][c]);
  }
}

// Stores a thread's 4 x 4 tile into `dst` [64][PAD]: transposed (dst[col][row]) or not.
template <bool TRANSPOSED>
__device__ __forceinline__ void store_tile(float* dst, const float t[4][4]) {
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
#pragma unroll
  for (int x = 0; x < 4; ++x) {
    float4 v = TRANSPOSED ? make_float4(t[0][x], t[1][x], t[2][x], t[3][x])
                          : make_float4(t[x][0], t[x][1], t[x][2], t[x][3]);
    int row = TRANSPOSED ? tc * 4 + x : tr * 4 + x;
    int col = TRANSPOSED ? tr * 4 : tc * 4;
    *reinterpret_cast<float4*>(&dst[row * PAD + col]) = v;
  }
}

// Max and sum over the 16 threads of a half-warp (one tile row).
__device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T, int DP>
__device__ void forward(const T* q, const T* k, const T* v, float* out, Sizes sz, View qv,
                        View kv, View vv) {
  constexpr int CO = DP / 16;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* Qt = smem;
  float* Kt = Qt + DP * PAD;
  float* Vs = Kt + DP * PAD;
  float* Pt = Vs + TILE * DP;
  const int q0 = blockIdx.x * TILE, h = blockIdx.y, b = blockIdx.z;
  const int kh = h / sz.group();
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  const int rows = min(TILE, sz.LQ - q0);
  const int kend = sz.keys_for(q0 + rows - 1);
  const float sl2 = sz.scale * LOG2E;
  load_tile<T, DP, true>(Qt, q, qv.at(b, h, q0), qv.pos, rows, sz.D);
  float o[4][CO], m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -CUDART_INF_F;
    l[i] = 0.f;
#pragma unroll
    for (int c = 0; c < CO; ++c) o[i][c] = 0.f;
  }
  for (int k0 = 0; k0 < kend; k0 += TILE) {
    const int cols = min(TILE, kend - k0);
    __syncthreads();  // the previous tile's Kt, Vs and Pt are read
    load_tile<T, DP, true>(Kt, k, kv.at(b, kh, k0), kv.pos, cols, sz.D);
    load_tile<T, DP, false>(Vs, v, vv.at(b, kh, k0), vv.pos, cols, sz.D);
    __syncthreads();
    float s[4][4];
    tile_abt<DP>(s, Qt, Kt);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int qi = q0 + tr * 4 + i;
      float mx = m[i];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int kj = k0 + tc * 4 + j;
        s[i][j] = sz.visible(qi, kj) ? s[i][j] * sl2 : -CUDART_INF_F;
        mx = fmaxf(mx, s[i][j]);
      }
      mx = row_max(mx);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = mx == -CUDART_INF_F ? 0.f : exp2f(s[i][j] - mx);
        sum += s[i][j];
      }
      sum = row_sum(sum);
      const float corr = m[i] == -CUDART_INF_F ? 0.f : exp2f(m[i] - mx);
      l[i] = l[i] * corr + sum;
      m[i] = mx;
#pragma unroll
      for (int c = 0; c < CO; ++c) o[i][c] *= corr;
    }
    store_tile<true>(Pt, s);
    __syncthreads();
    tile_acc<DP>(o, Pt, Vs);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int qi = q0 + tr * 4 + i;
    if (qi >= sz.LQ) continue;
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
    const long long row = sz.o_row(b, qi, h);
#pragma unroll
    for (int c = 0; c < CO; ++c) {
      const int col = tc * CO + c;
      if (col < sz.D) out[row + col] = o[i][c] * inv;
    }
    if (tc == 0) out[sz.lse_at(b, h, qi)] = l[i] > 0.f ? (m[i] + log2f(l[i])) / LOG2E : -CUDART_INF_F;
  }
}

// delta[b, h, i] = dout[b, i, h] . o[b, i, h]: one warp per row.
__device__ void row_deltas(const float* out, const float* dout, float* delta, Sizes sz) {
  const long long rows = (long long)sz.B * sz.H * sz.LQ;
  const long long row = (long long)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int i = row % sz.LQ, h = (row / sz.LQ) % sz.H, b = row / ((long long)sz.LQ * sz.H);
  const long long at = sz.o_row(b, i, h);
  float acc = 0.f;
  for (int c = threadIdx.x % 32; c < sz.D; c += 32) acc += dout[at + c] * out[at + c];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (threadIdx.x % 32 == 0) delta[row] = acc;
}

// P and dS of one tile: rows = queries q0.. (tr), cols = keys k0.. (tc), from
// S = Q K^T and dP = dO V^T; scaled so that dS is the gradient of q . k.
template <int DP>
__device__ __forceinline__ void probs_and_grads(float p[4][4], float ds[4][4], const float* Qt,
                                                const float* Kt, const float* dOt, const float* Vt,
                                                const float* lse2, const float* delta, int q0,
                                                int k0, const Sizes& sz) {
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  tile_abt<DP>(p, Qt, Kt);
  tile_abt<DP>(ds, dOt, Vt);
  const float sl2 = sz.scale * LOG2E;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = tr * 4 + i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool vis = sz.visible(q0 + r, k0 + tc * 4 + j);
      p[i][j] = vis ? exp2f(p[i][j] * sl2 - lse2[r]) : 0.f;
      ds[i][j] = p[i][j] * (ds[i][j] - delta[r]) * sz.scale;
    }
  }
}

// Loads lse (in log2 units) and delta of query rows q0.. of (b, h).
__device__ __forceinline__ void load_rows(float* lse2, float* dl, const float* out,
                                          const float* delta, int b, int h, int q0,
                                          const Sizes& sz) {
  for (int r = threadIdx.x; r < TILE; r += THREADS) {
    const int qi = q0 + r;
    const bool in = qi < sz.LQ;
    lse2[r] = in ? out[sz.lse_at(b, h, qi)] * LOG2E : CUDART_INF_F;
    dl[r] = in ? delta[((long long)b * sz.H + h) * sz.LQ + qi] : 0.f;
  }
}

// dK, dV of key tile k0.. of KV head kh, over every query of the group's
// heads that sees them, and the tile's share of dQ (atomically added: each
// query row gets one share per key tile it sees; `grads` starts zeroed).
template <typename T, int DP>
__device__ void key_grads(const T* q, const T* k, const T* v, const float* out, const float* dout,
                          const float* delta, float* grads, Sizes sz, View qv, View kv, View vv) {
  constexpr int CO = DP / 16;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float* Kt = smem;
  float* Vt = Kt + DP * PAD;
  float* Qt = Vt + DP * PAD;
  float* dOt = Qt + DP * PAD;
  float* Qs = dOt + DP * PAD;
  float* dOs = Qs + TILE * DP;
  float* Ps = dOs + TILE * DP;
  float* dSs = Ps + TILE * PAD;
  float* dSt = dSs + TILE * PAD;
  float* Ks = dSt + TILE * PAD;
  float* lse2 = Ks + TILE * DP;
  float* dl = lse2 + TILE;
  const int k0 = blockIdx.x * TILE, kh = blockIdx.y, b = blockIdx.z;
  const int tr = threadIdx.x / 16, tc = threadIdx.x % 16;
  const int cols = min(TILE, sz.LK - k0);
  load_tile<T, DP, true>(Kt, k, kv.at(b, kh, k0), kv.pos, cols, sz.D);
  load_tile<T, DP, true>(Vt, v, vv.at(b, kh, k0), vv.pos, cols, sz.D);
  load_tile<T, DP, false>(Ks, k, kv.at(b, kh, k0), kv.pos, cols, sz.D);
  float dk[4][CO], dv[4][CO];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int c = 0; c < CO; ++c) dk[i][c] = dv[i][c] = 0.f;
  const int first = sz.causal ? max(0, min(sz.LQ, k0 + sz.LQ - sz.LK)) / TILE * TILE : 0;
  const long long ld_o = (long long)sz.H * sz.D;
  for (int h = kh * sz.group(); h < (kh + 1) * sz.group(); ++h) {
    for (int q0 = first; q0 < sz.LQ; q0 += TILE) {
      const int rows = min(TILE, sz.LQ - q0);
      __syncthreads();
      load_tile<T, DP, true>(Qt, q, qv.at(b, h, q0), qv.pos, rows, sz.D);
      load_tile<T, DP, false>(Qs, q, qv.at(b, h, q0), qv.pos, rows, sz.D);
      load_tile<float, DP, true>(dOt, dout, sz.o_row(b, q0, h), ld_o, rows, sz.D);
      load_tile<float, DP, false>(dOs, dout, sz.o_row(b, q0, h), ld_o, rows, sz.D);
      load_rows(lse2, dl, out, delta, b, h, q0, sz);
      __syncthreads();
      float p[4][4], ds[4][4];
      probs_and_grads<DP>(p, ds, Qt, Kt, dOt, Vt, lse2, dl, q0, k0, sz);
      store_tile<false>(Ps, p);
      store_tile<false>(dSs, ds);
      store_tile<true>(dSt, ds);
      __syncthreads();
      tile_acc<DP>(dv, Ps, dOs);
      tile_acc<DP>(dk, dSs, Qs);
      // This key tile's share of dQ, added to the other key tiles' shares.
      float dq[4][CO];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < CO; ++c) dq[i][c] = 0.f;
      tile_acc<DP>(dq, dSt, Ks);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int qi = q0 + tr * 4 + i;
        if (qi >= sz.LQ) continue;
        const long long row = sz.o_row(b, qi, h);
#pragma unroll
        for (int c = 0; c < CO; ++c) {
          const int col = tc * CO + c;
          if (col < sz.D) atomicAdd(&grads[row + col], dq[i][c]);
        }
      }
    }
  }
  const long long dv_start = (long long)sz.B * sz.LK * sz.HKV * sz.D;
  float* dq_end = grads + (long long)sz.B * sz.LQ * sz.H * sz.D;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int kj = k0 + tr * 4 + i;
    if (kj >= sz.LK) continue;
    const long long row = sz.kv_row(b, kj, kh);
#pragma unroll
    for (int c = 0; c < CO; ++c) {
      const int col = tc * CO + c;
      if (col < sz.D) {
        dq_end[row + col] = dk[i][c];
        dq_end[dv_start + row + col] = dv[i][c];
      }
    }
  }
}

#define VIEW_ARGS(x) long long x##_start, long long x##_batch, long long x##_head, long long x##_pos
#define VIEW(x) View{x##_start, x##_batch, x##_head, x##_pos}
#define SIZE_ARGS int B, int H, int HKV, int LQ, int LK, int D, int causal, float scale
#define SIZES Sizes{B, H, HKV, LQ, LK, D, causal, scale}

#define INSTANTIATE(T, NAME, DP)                                                                  \
  extern "C" __global__ void __launch_bounds__(THREADS) flash_fwd_##NAME##_d##DP(                 \
      const T* q, const T* k, const T* v, float* out, SIZE_ARGS, VIEW_ARGS(qv), VIEW_ARGS(kv),    \
      VIEW_ARGS(vv)) {                                                                            \
    forward<T, DP>(q, k, v, out, SIZES, VIEW(qv), VIEW(kv), VIEW(vv));                            \
  }                                                                                               \
  extern "C" __global__ void __launch_bounds__(THREADS) flash_bwd_kv_##NAME##_d##DP(              \
      const T* q, const T* k, const T* v, const float* out, const float* dout,                   \
      const float* delta, float* grads, SIZE_ARGS, VIEW_ARGS(qv), VIEW_ARGS(kv), VIEW_ARGS(vv)) { \
    key_grads<T, DP>(q, k, v, out, dout, delta, grads, SIZES, VIEW(qv), VIEW(kv), VIEW(vv));     \
  }

INSTANTIATE(float, f32, 32)
INSTANTIATE(float, f32, 64)
INSTANTIATE(__nv_bfloat16, bf16, 32)
INSTANTIATE(__nv_bfloat16, bf16, 64)
INSTANTIATE(__half, f16, 32)
INSTANTIATE(__half, f16, 64)

extern "C" __global__ void __launch_bounds__(THREADS) flash_row_deltas(const float* out,
                                                                      const float* dout,
                                                                      float* delta, SIZE_ARGS) {
  row_deltas(out, dout, delta, SIZES);
}
