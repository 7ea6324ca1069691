// The backward pass of Mamba's selective scan (the forward is selective_scan.cu,
// whose header comment gives the recurrence, the rules and the layouts):
//
//   dh_t      = abar_{t+1} dh_{t+1} + do_t C_t          (do_t = dy_t silu(z_t); dh_{L-1} adds dhlast)
//   d abar_t  = dh_t h_{t-1},  d in_t = dh_t              (in_t = gain_t B_t u_t)
//   dC_t     += do_t h_t,      dB_t  += dh_t gain_t u_t   (summed over channels: atomics)
//   du_t      = do_t D + sum_n dh_t gain_t B_t,  dz_t = dy_t o_t silu'(z_t)  (o_t = C_t.h_t + D u_t)
//   d dtA_t, d delta_t, dA and dD from the chain rule through discretize();  dh0 = abar_0 dh_0.
//
// One block per GROUP channels and batch row b; the THREADS threads of each
// channel (threadIdx.x) split a chunk of THREADS * ITEMS positions, ITEMS
// consecutive ones each; the scans below run per channel.
//
// 1. Forward over the chunks: the state entering each (global scratch
//    `entering` (B, D, chunks, NP)). Only each chunk's composed map is
//    needed, so per chunk every thread composes its positions' maps for every
//    state entry, warps reduce them in order, and thread n chains entry n:
//    two barriers per chunk.
// 2. Backward, from the last chunk to the first. Per state entry n, one
//    fused block scan runs two scans in opposite directions with the same two
//    barriers: forward, the maps x -> abar x + in from the chunk's entering
//    state (giving h_{t-1}, h_t); in reverse, the maps x -> abar (x + b) with
//    b_t = do_t C_t, whose value entering position t is f_{t+1} = abar_{t+1}
//    dh_{t+1}, so dh_t = f_{t+1} + b_t with no shift across threads. Each
//    thread keeps its positions' du, d delta, d dtA and o in registers across
//    n. Channels visit the state entries in rotated order, so that blocks
//    running at once spread their dB/dC atomics over N addresses per position.
//
// B and C come transposed, bct (B, 2N, L) ([B | C] per batch row, positions
// contiguous), so that a warp's loads of one state entry over its positions
// are coalesced; their gradient dbct has the same layout.
//
// Gradients of B and C, dA and dD are accumulated with
// atomicAdd into zeroed buffers (dB and dC first summed over the block's
// channels in shared memory: the global atomics on them bound the kernel);
// every other output is written once.
#include "selective_scan_common.cuh"

#define THREADS 128
#define ITEMS 4
#define WARPS (THREADS / 32)
// Channels per block (threadIdx.y): their dB/dC contributions are summed in
// shared memory before one global atomic per position and state entry.
#define GROUP 4

template <typename T> struct Affine {
    T a, b;  // x -> a x + b
};

// `first` then `then`.
template <typename T> __device__ __forceinline__ Affine<T> compose(Affine<T> first, Affine<T> then) {
    return {first.a * then.a, then.a * first.b + then.b};
}

// Two block-wide scans of one affine map per thread, sharing their barriers:
// `f` in thread order, `r` in reverse thread order. Each returns (in `*_enter`)
// the value entering this thread's map when `*_carry` enters the block's, and
// sets `*_carry` to the value leaving the block. `sh` holds 4 * WARPS values.
// Every thread of the block must call it.
template <typename T>
__device__ void block_scan2(Affine<T> f, T& f_carry, T& f_enter, Affine<T> r, T& r_carry, T& r_enter, T* sh) {
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const T fa = __shfl_up_sync(full, f.a, off), fb = __shfl_up_sync(full, f.b, off);
        const T ra = __shfl_down_sync(full, r.a, off), rb = __shfl_down_sync(full, r.b, off);
        if (lane >= off) f = compose(Affine<T>{fa, fb}, f);
        if (lane + off < 32) r = compose(Affine<T>{ra, rb}, r);
    }
    const T fea = __shfl_up_sync(full, f.a, 1), feb = __shfl_up_sync(full, f.b, 1);
    const T rea = __shfl_down_sync(full, r.a, 1), reb = __shfl_down_sync(full, r.b, 1);
    Affine<T> f_before = lane == 0 ? Affine<T>{T(1), T(0)} : Affine<T>{fea, feb};
    Affine<T> r_before = lane == 31 ? Affine<T>{T(1), T(0)} : Affine<T>{rea, reb};
    if (lane == 31) {
        sh[4 * warp] = f.a;
        sh[4 * warp + 1] = f.b;
    }
    if (lane == 0) {
        sh[4 * warp + 2] = r.a;
        sh[4 * warp + 3] = r.b;
    }
    __syncthreads();
    Affine<T> fw{T(1), T(0)}, ft{T(1), T(0)}, rw{T(1), T(0)}, rt{T(1), T(0)};
#pragma unroll
    for (int k = 0; k < WARPS; ++k) {
        const Affine<T> fp{sh[4 * k], sh[4 * k + 1]};
        if (k < warp) fw = compose(fw, fp);
        ft = compose(ft, fp);
        const int w = WARPS - 1 - k;
        const Affine<T> rp{sh[4 * w + 2], sh[4 * w + 3]};
        if (w > warp) rw = compose(rw, rp);
        rt = compose(rt, rp);
    }
    __syncthreads();
    f_before = compose(fw, f_before);
    r_before = compose(rw, r_before);
    f_enter = f_before.a * f_carry + f_before.b;
    f_carry = ft.a * f_carry + ft.b;
    r_enter = r_before.a * r_carry + r_before.b;
    r_carry = rt.a * r_carry + rt.b;
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
    T *duz, *ddelta, *ddta, *dbct, *da, *dskip, *dh0;
};

template <typename T, int NP, int RULE>
__device__ void scan_bwd(const T* __restrict__ uz, const T* __restrict__ delta, const T* __restrict__ dta,
                         const T* __restrict__ bct, const T* __restrict__ amat, const T* __restrict__ skip,
                         const T* __restrict__ h0, const T* __restrict__ gy, const T* __restrict__ ghlast,
                         Grads<T> g, T* __restrict__ entering, int same_dta, Shape s) {
    __shared__ T sh_all[GROUP * 4 * WARPS];
    __shared__ T totals_all[GROUP * WARPS * NP * 2];
    constexpr int CH = THREADS * ITEMS;
    __shared__ T sum_db[CH], sum_dc[CH];
    const int tid = threadIdx.x, b = blockIdx.y;
    const int lane = tid & 31, warp = tid >> 5;
    // A group past D repeats channel D - 1 (so every thread reaches every
    // barrier) and writes nothing.
    const bool live = blockIdx.x * GROUP + threadIdx.y < s.D;
    const int d = min(blockIdx.x * GROUP + threadIdx.y, s.D - 1);
    T* sh = sh_all + threadIdx.y * 4 * WARPS;
    T* totals = totals_all + threadIdx.y * WARPS * NP * 2;
    for (int i = threadIdx.y * THREADS + tid; i < CH; i += GROUP * THREADS) sum_db[i] = sum_dc[i] = T(0);
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

    // 1. The state entering each chunk; thread n < N chains entry n.
    T carry = tid < s.N ? h0[state_at + (size_t)tid * 16] : T(0);
    for (int c = 0; c < chunks; ++c) {
        if (live && tid < s.N) ent[c * NP + tid] = carry;
        if (c == chunks - 1) break;  // chunks before the last are full
        load(c);
#pragma unroll 1
        for (int n = 0; n < s.N; ++n) {
            Affine<T> m{T(1), T(0)};
#pragma unroll
            for (int j = 0; j < ITEMS; ++j) {
                const int t = c * CH + tid * ITEMS + j;
                T abar, gain;
                discretize<T, RULE>(dt[j], dl[j], a[n], abar, gain);
                m = compose(m, Affine<T>{abar, gain * bct[((size_t)b * 2 * s.N + n) * s.L + t] * u[j]});
            }
            // In-order warp reduction: lane i ends with lanes [i, i + 2 off).
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
                const T oa = __shfl_down_sync(0xffffffffu, m.a, off);
                const T ob = __shfl_down_sync(0xffffffffu, m.b, off);
                if (lane + off < 32) m = compose(m, Affine<T>{oa, ob});
            }
            if (lane == 0) {
                totals[(warp * NP + n) * 2] = m.a;
                totals[(warp * NP + n) * 2 + 1] = m.b;
            }
        }
        __syncthreads();
        if (tid < s.N) {
            Affine<T> m{T(1), T(0)};
            for (int w = 0; w < WARPS; ++w)
                m = compose(m, Affine<T>{totals[(w * NP + tid) * 2], totals[(w * NP + tid) * 2 + 1]});
            carry = m.a * carry + m.b;
        }
        __syncthreads();
    }
    __syncthreads();  // `ent` is read by every thread

    // 2. Backward over the chunks. gcarry[n] is f entering the chunk's last
    // position from the later ones (the gradient into the last state at first).
    T gcarry[NP], da_acc[NP];
#pragma unroll
    for (int n = 0; n < NP; ++n) {
        gcarry[n] = n < s.N ? ghlast[state_at + (size_t)n * 16] : T(0);
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
#pragma unroll 1
        for (int k = 0; k < s.N; ++k) {
            const int n = (k + blockIdx.x) % s.N;
            const size_t b_row = ((size_t)b * 2 * s.N + n) * s.L, c_row = b_row + (size_t)s.N * s.L;
            T abar[ITEMS], gain[ITEMS], bn[ITEMS], cn[ITEMS];
            Affine<T> fwd{T(1), T(0)}, rev{T(1), T(0)};
#pragma unroll
            for (int j = 0; j < ITEMS; ++j) {
                const int t = c * CH + tid * ITEMS + j;
                const bool ok = t < s.L;
                bn[j] = ok ? bct[b_row + t] : T(0);
                cn[j] = ok ? bct[c_row + t] : T(0);
                discretize<T, RULE>(dt[j], dl[j], a[n], abar[j], gain[j]);
                if (!ok) abar[j] = T(1);
                fwd = compose(fwd, Affine<T>{abar[j], gain[j] * bn[j] * u[j]});
            }
#pragma unroll
            for (int j = ITEMS - 1; j >= 0; --j) {
                const T bj = dout[j] * cn[j];
                rev = compose(rev, Affine<T>{abar[j], abar[j] * bj});
            }
            T h_carry = ent[c * NP + n], h, f;
            block_scan2(fwd, h_carry, h, rev, gcarry[n], f, sh);
            T hprev[ITEMS];
#pragma unroll
            for (int j = 0; j < ITEMS; ++j) {
                hprev[j] = h;
                h = abar[j] * h + gain[j] * bn[j] * u[j];
                o[j] += cn[j] * h;
                const int t = c * CH + tid * ITEMS + j;
                if (live && t < s.L) atomicAdd(&sum_dc[tid * ITEMS + j], dout[j] * h);
            }
#pragma unroll
            for (int j = ITEMS - 1; j >= 0; --j) {
                const T dh = f + dout[j] * cn[j];
                f = abar[j] * dh;
                const int t = c * CH + tid * ITEMS + j;
                if (t >= s.L) continue;
                T dabar_dx, dgain_ddelta, dgain_da;
                discretize_grad<T, RULE>(dt[j], dl[j], a[n], abar[j], dabar_dx, dgain_ddelta, dgain_da);
                const T dabar = dh * hprev[j];
                const T dgain = dh * bn[j] * u[j];
                du[j] += dh * gain[j] * bn[j];
                if (live) atomicAdd(&sum_db[tid * ITEMS + j], dh * gain[j] * u[j]);
                ddt[j] += dabar * dabar_dx * a[n];
                ddl[j] += dgain * dgain_ddelta;
                da_acc[n] += dabar * dabar_dx * dt[j] + dgain * dgain_da;
            }
            __syncthreads();
            if (threadIdx.y == 0) {
#pragma unroll
                for (int j = 0; j < ITEMS; ++j) {
                    const int t = c * CH + tid * ITEMS + j;
                    const int i = tid * ITEMS + j;
                    if (t < s.L) {
                        atomicAdd(g.dbct + b_row + t, sum_db[i]);
                        atomicAdd(g.dbct + c_row + t, sum_dc[i]);
                    }
                    sum_db[i] = sum_dc[i] = T(0);
                }
            }
            __syncthreads();
        }
#pragma unroll
        for (int j = 0; j < ITEMS; ++j) {
            const int t = c * CH + tid * ITEMS + j;
            if (!live || t >= s.L) continue;
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
    // dh0 = f entering the first position; dA (summed over the batch rows by atomics) and dD.
    if (live && tid == 0)
        for (int n = 0; n < s.N; ++n) g.dh0[state_at + (size_t)n * 16] = gcarry[n];
#pragma unroll 1
    for (int n = 0; n < s.N; ++n) {
        const T total = block_sum(da_acc[n], sh);
        if (live && tid == 0) atomicAdd(g.da + (size_t)d * s.N + n, total);
    }
    const T total = block_sum(dskip_acc, sh);
    if (live && tid == 0) atomicAdd(g.dskip + d, total);
}

#define BWD_ENTRY(T, TN, NP, RULE)                                                                          \
    extern "C" __global__ void __launch_bounds__(THREADS * GROUP) selective_scan_bwd_##TN##_n##NP##_r##RULE( \
        const T* uz, const T* delta, const T* dta, const T* bct, const T* amat, const T* skip, const T* h0, \
        const T* gy, const T* ghlast, T* duz, T* ddelta, T* ddta, T* dbct, T* da, T* dskip, T* dh0,        \
        T* entering, int same_dta, int L, int D, int N, int K, int R) {                                     \
        scan_bwd<T, NP, RULE>(uz, delta, dta, bct, amat, skip, h0, gy, ghlast,                             \
                              Grads<T>{duz, ddelta, ddta, dbct, da, dskip, dh0}, entering, same_dta,       \
                              Shape{L, D, N, K, R});                                                        \
    }
INSTANTIATE_ALL(BWD_ENTRY)
