// The backward pass of Mamba's selective scan (the forward is selective_scan.cu,
// whose header comment gives the recurrence, the rules and the layouts):
//
//   dh_t      = abar_{t+1} dh_{t+1} + do_t C_t          (do_t = dy_t silu(z_t); dh_{L-1} adds dhlast)
//   d abar_t  = dh_t h_{t-1},  d in_t = dh_t              (in_t = gain_t B_t u_t)
//   dC_t     += do_t h_t,      dB_t  += dh_t gain_t u_t   (summed over channels: atomics)
//   du_t      = do_t D + sum_n dh_t gain_t B_t,  dz_t = dy_t o_t silu'(z_t)  (o_t = C_t.h_t + D u_t)
//   d dtA_t, d delta_t, dA and dD from the chain rule through discretize();  dh0 = abar_0 dh_0.
//
// One block per (channel d, batch row b); its THREADS threads split a chunk
// of THREADS * ITEMS positions, ITEMS consecutive ones each. The block first
// runs the recurrence forward over the chunks to find the state entering each
// (kept in `entering`, global scratch (B, D, chunks, NP)). It then walks the
// chunks from the last to the first. Per chunk and state entry n, two block
// scans of the affine maps x -> a x + b: forward from the chunk's entering
// state (giving h_{t-1} and h_t at every position), and in reverse from the
// gradient entering from the later chunk (giving dh_t). Each thread keeps its
// positions' du, d delta, d dtA and o in registers across n, and its share of
// dA across chunks. The loops over n are not unrolled: the per-n arrays
// (A, the carries, dA) live in local memory, touched once per chunk and n.
//
// Gradients of dxdbl (B and C columns), dA and dD are accumulated with
// atomicAdd into zeroed buffers; every other output is written once.
#include "selective_scan_common.cuh"

#define THREADS 128
#define ITEMS 4
#define WARPS (THREADS / 32)

template <typename T> struct Affine {
    T a, b;  // x -> a x + b
};

// `first` then `then`.
template <typename T> __device__ __forceinline__ Affine<T> compose(Affine<T> first, Affine<T> then) {
    return {first.a * then.a, then.a * first.b + then.b};
}

// Block-wide scan of one affine map per thread, in thread order (or reversed,
// REV): returns the value entering this thread's maps when `carry` enters the
// block's, and sets `carry` to the value leaving the block. `sh` holds
// 2 * WARPS values. Every thread of the block must call it.
template <typename T, bool REV> __device__ T block_scan(Affine<T> mine, T& carry, T* sh) {
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    Affine<T> inc = mine;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const T oa = REV ? __shfl_down_sync(full, inc.a, off) : __shfl_up_sync(full, inc.a, off);
        const T ob = REV ? __shfl_down_sync(full, inc.b, off) : __shfl_up_sync(full, inc.b, off);
        if (REV ? lane + off < 32 : lane >= off) inc = compose(Affine<T>{oa, ob}, inc);
    }
    const T ea = REV ? __shfl_down_sync(full, inc.a, 1) : __shfl_up_sync(full, inc.a, 1);
    const T eb = REV ? __shfl_down_sync(full, inc.b, 1) : __shfl_up_sync(full, inc.b, 1);
    Affine<T> before_me = (REV ? lane == 31 : lane == 0) ? Affine<T>{T(1), T(0)} : Affine<T>{ea, eb};
    if (REV ? lane == 0 : lane == 31) {
        sh[2 * warp] = inc.a;
        sh[2 * warp + 1] = inc.b;
    }
    __syncthreads();
    Affine<T> before_warp{T(1), T(0)}, total{T(1), T(0)};
#pragma unroll
    for (int k = 0; k < WARPS; ++k) {
        const int w = REV ? WARPS - 1 - k : k;
        const Affine<T> p{sh[2 * w], sh[2 * w + 1]};
        if (REV ? w > warp : w < warp) before_warp = compose(before_warp, p);
        total = compose(total, p);
    }
    __syncthreads();
    before_me = compose(before_warp, before_me);
    const T enter = before_me.a * carry + before_me.b;
    carry = total.a * carry + total.b;
    return enter;
}

// Sum of `v` over the block, valid in thread 0. `sh` holds WARPS values.
template <typename T> __device__ T block_sum(T v, T* sh) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    T s = T(0);
    if (threadIdx.x == 0)
        for (int w = 0; w < WARPS; ++w) s += sh[w];
    __syncthreads();
    return s;
}

template <typename T> struct Grads {
    T *duz, *ddelta, *ddta, *dxdbl, *da, *dskip, *dh0;
};

template <typename T, int NP, int RULE>
__device__ void scan_bwd(const T* __restrict__ uz, const T* __restrict__ delta, const T* __restrict__ dta,
                         const T* __restrict__ xdbl, const T* __restrict__ amat, const T* __restrict__ skip,
                         const T* __restrict__ h0, const T* __restrict__ gy, const T* __restrict__ ghlast,
                         Grads<T> g, T* __restrict__ entering, int same_dta, Shape s) {
    __shared__ T sh[2 * WARPS];
    __shared__ T abar_sh[THREADS * ITEMS];
    constexpr int CH = THREADS * ITEMS;
    const int d = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
    const int chunks = (s.L + CH - 1) / CH;
    const size_t row = (size_t)b * s.L;
    const size_t state_at = ((size_t)b * ((s.D + 15) / 16) + d / 16) * s.N * 16 + d % 16;
    T* ent = entering + ((size_t)b * s.D + d) * chunks * NP;

    T a[NP];
#pragma unroll
    for (int n = 0; n < NP; ++n) a[n] = n < s.N ? amat[(size_t)d * s.N + n] : T(-1);

    // The chunk's positions of this thread: t = c * CH + tid * ITEMS + j.
    T u[ITEMS], dl[ITEMS], dt[ITEMS];
    auto load = [&](int c) {
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int t = c * CH + tid * ITEMS + j;
            const bool ok = t < s.L;
            const size_t i = row + (ok ? t : 0);
            u[j] = ok ? uz[i * 2 * s.D + d] : T(0);
            dl[j] = ok ? delta[i * s.D + d] : T(0);
            dt[j] = ok ? dta[i * s.D + d] : T(0);
        }
    };

    // Forward over the chunks: the state entering each.
    T carry[NP];
#pragma unroll
    for (int n = 0; n < NP; ++n) carry[n] = n < s.N ? h0[state_at + (size_t)n * 16] : T(0);
    for (int c = 0; c < chunks; ++c) {
        if (tid == 0)
#pragma unroll
            for (int n = 0; n < NP; ++n) ent[c * NP + n] = carry[n];
        if (c == chunks - 1) break;
        load(c);
#pragma unroll 1
        for (int n = 0; n < NP; ++n) {
            if (n < s.N) {
                Affine<T> m{T(1), T(0)};
#pragma unroll
                for (int j = 0; j < ITEMS; ++j) {
                    const int t = c * CH + tid * ITEMS + j;
                    T abar, gain;
                    discretize<T, RULE>(dt[j], dl[j], a[n], abar, gain);
                    const T bn = xdbl[(row + t) * s.K + s.R + n];
                    m = compose(m, Affine<T>{abar, gain * bn * u[j]});
                }
                block_scan<T, false>(m, carry[n], sh);
            }
        }
    }
    __syncthreads();  // `ent` written by thread 0 is read by all

    // Backward over the chunks.
    T gcarry[NP], da_acc[NP];
#pragma unroll
    for (int n = 0; n < NP; ++n) {
        gcarry[n] = (ghlast != nullptr && n < s.N) ? ghlast[state_at + (size_t)n * 16] : T(0);
        da_acc[n] = T(0);
    }
    T dskip_acc = T(0);
    const T dskip_d = skip[d];
    for (int c = chunks - 1; c >= 0; --c) {
        load(c);
        T z[ITEMS], dy[ITEMS], dout[ITEMS], o[ITEMS], du[ITEMS], ddl[ITEMS], ddt[ITEMS];
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int t = c * CH + tid * ITEMS + j;
            const bool ok = t < s.L;
            const size_t i = row + (ok ? t : 0);
            z[j] = ok ? uz[i * 2 * s.D + s.D + d] : T(0);
            dy[j] = ok ? gy[i * s.D + d] : T(0);
            const T sig = T(1) / (T(1) + Math<T>::exp(-z[j]));
            dout[j] = dy[j] * z[j] * sig;
            o[j] = dskip_d * u[j];
            du[j] = dout[j] * dskip_d;
            ddl[j] = T(0);
            ddt[j] = T(0);
            dskip_acc += dout[j] * u[j];
        }
        const int chunk_len = min(CH, s.L - c * CH);
#pragma unroll 1
        for (int n = 0; n < NP; ++n) {
            if (n >= s.N) continue;
            T abar[ITEMS], gain[ITEMS], bn[ITEMS], cn[ITEMS];
            Affine<T> fwd{T(1), T(0)};
#pragma unroll
            for (int j = 0; j < ITEMS; ++j) {
                const int t = c * CH + tid * ITEMS + j;
                const bool ok = t < s.L;
                const size_t i = row + (ok ? t : 0);
                bn[j] = ok ? xdbl[i * s.K + s.R + n] : T(0);
                cn[j] = ok ? xdbl[i * s.K + s.R + s.N + n] : T(0);
                discretize<T, RULE>(dt[j], dl[j], a[n], abar[j], gain[j]);
                if (!ok) abar[j] = T(1);
                abar_sh[tid * ITEMS + j] = abar[j];
                fwd = compose(fwd, Affine<T>{abar[j], gain[j] * bn[j] * u[j]});
            }
            T h_in = ent[c * NP + n];
            T h = block_scan<T, false>(fwd, h_in, sh);  // also publishes abar_sh
            const T abar_first = abar_sh[0];
            T hprev[ITEMS];
            Affine<T> rev{T(1), T(0)};
            T bprime[ITEMS], aprime[ITEMS];
#pragma unroll
            for (int j = 0; j < ITEMS; ++j) {
                hprev[j] = h;
                h = abar[j] * h + gain[j] * bn[j] * u[j];
                o[j] += cn[j] * h;
                const int t = c * CH + tid * ITEMS + j;
                if (t < s.L) atomicAdd(g.dxdbl + (row + t) * s.K + s.R + s.N + n, dout[j] * h);
                const int next = tid * ITEMS + j + 1;
                aprime[j] = next < chunk_len ? abar_sh[next] : T(1);
                bprime[j] = dout[j] * cn[j];
            }
#pragma unroll
            for (int j = ITEMS - 1; j >= 0; --j) rev = compose(rev, Affine<T>{aprime[j], bprime[j]});
            T gin = gcarry[n];
            T dh = block_scan<T, true>(rev, gin, sh);  // gin: dh at the chunk's first position
            gcarry[n] = abar_first * gin;
#pragma unroll
            for (int j = ITEMS - 1; j >= 0; --j) {
                dh = aprime[j] * dh + bprime[j];
                const int t = c * CH + tid * ITEMS + j;
                if (t >= s.L) continue;
                T dabar_dx, dgain_ddelta, dgain_da;
                discretize_grad<T, RULE>(dt[j], dl[j], a[n], abar[j], dabar_dx, dgain_ddelta, dgain_da);
                const T dabar = dh * hprev[j];
                const T dgain = dh * bn[j] * u[j];
                du[j] += dh * gain[j] * bn[j];
                atomicAdd(g.dxdbl + (row + t) * s.K + s.R + n, dh * gain[j] * u[j]);
                ddt[j] += dabar * dabar_dx * a[n];
                ddl[j] += dgain * dgain_ddelta;
                da_acc[n] += dabar * dabar_dx * dt[j] + dgain * dgain_da;
            }
        }
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int t = c * CH + tid * ITEMS + j;
            if (t >= s.L) continue;
            const size_t i = row + t;
            const T sig = T(1) / (T(1) + Math<T>::exp(-z[j]));
            const T dsilu = sig * (T(1) + z[j] * (T(1) - sig));
            g.duz[i * 2 * s.D + d] = du[j];
            g.duz[i * 2 * s.D + s.D + d] = dy[j] * o[j] * dsilu;
            if (same_dta) {
                g.ddelta[i * s.D + d] = ddl[j] + ddt[j];
            } else {
                g.ddelta[i * s.D + d] = ddl[j];
                g.ddta[i * s.D + d] = ddt[j];
            }
        }
    }
    // dh0, dA (summed over the batch rows by atomics) and dD.
    if (tid == 0)
#pragma unroll
        for (int n = 0; n < NP; ++n)
            if (n < s.N) g.dh0[state_at + (size_t)n * 16] = gcarry[n];
#pragma unroll 1
    for (int n = 0; n < NP; ++n) {
        if (n >= s.N) continue;
        const T total = block_sum(da_acc[n], sh);
        if (tid == 0) atomicAdd(g.da + (size_t)d * s.N + n, total);
    }
    const T total = block_sum(dskip_acc, sh);
    if (tid == 0) atomicAdd(g.dskip + d, total);
}

#define BWD_ENTRY(T, TN, NP, RULE)                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS) selective_scan_bwd_##TN##_n##NP##_r##RULE(        \
        const T* uz, const T* delta, const T* dta, const T* xdbl, const T* amat, const T* skip, const T* h0, \
        const T* gy, const T* ghlast, T* duz, T* ddelta, T* ddta, T* dxdbl, T* da, T* dskip, T* dh0,        \
        T* entering, int same_dta, int L, int D, int N, int K, int R) {                                     \
        scan_bwd<T, NP, RULE>(uz, delta, dta, xdbl, amat, skip, h0, gy, ghlast,                             \
                              Grads<T>{duz, ddelta, ddta, dxdbl, da, dskip, dh0}, entering, same_dta,       \
                              Shape{L, D, N, K, R});                                                        \
    }
#define BWD_RULES(T, TN, NP) \
    BWD_ENTRY(T, TN, NP, 0)  \
    BWD_ENTRY(T, TN, NP, 1)  \
    BWD_ENTRY(T, TN, NP, 2)  \
    BWD_ENTRY(T, TN, NP, 3)
#define BWD_SIZES(T, TN)   \
    BWD_RULES(T, TN, 4)    \
    BWD_RULES(T, TN, 8)    \
    BWD_RULES(T, TN, 16)   \
    BWD_RULES(T, TN, 32)   \
    BWD_RULES(T, TN, 64)

BWD_SIZES(float, f32)
BWD_SIZES(double, f64)
