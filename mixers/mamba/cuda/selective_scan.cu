// Mamba's selective scan on the GPU (forward), after x_proj, dt_proj and softplus:
//
//   h_t[n] = Abar(dtA_t, A[n]) * h_{t-1}[n] + gain(delta_t, A[n]) * B_t[n] * u_t
//   y_t    = (sum_n C_t[n] h_t[n] + D * u_t) * silu(z_t)
//
// per batch row b and channel d. Rules (as the CPU kernels, `Rule` in Rust):
//   0 mamba:    Abar = exp(dtA A),                       gain = delta
//   1 zoh:      Abar = exp(dtA A),                       gain = expm1(delta A) / A
//   2 bilinear: Abar = (1 + dtA A / 2) / (1 - dtA A / 2), gain = delta / (1 - delta A / 2)
//   3 dirac:    Abar = exp(dtA A),                       gain = 1
//
// Layouts: u and z are columns [0, D) and [D, 2D) of uz (B, L, 2D); delta and
// dtA are (B, L, D); B and C are columns [R, R+N) and [R+N, R+2N) of xdbl
// (B, L, K); A (D, N); skip (D); h0 and hlast (B, ceil(D/16), N, 16), the CPU
// kernels' state layout (hlast's padding lanes zero). y is (B, L, D).
//
// One block owns W channels of one batch row and all of L, cut into C chunks
// (threadIdx.y); each thread keeps the NP (>= N) states of its channel in
// registers. Three phases: every chunk scans from zero (end state e, and the
// chunk's decay: sum of dtA for the exp rules, product of Abar for bilinear);
// one thread per channel chains the carries; every chunk rescans from its
// carry and writes y. Loads are issued UNROLL positions ahead. Kernels are
// instantiated per dtype, state size NP and rule: selective_scan_f32_n16_r0.
#include "selective_scan_common.cuh"

// Timesteps whose loads are issued before any is used (hides DRAM latency).
#define UNROLL 8

// One timestep's per-channel inputs.
template <typename T> struct Step {
    T u, z, delta, dta;
};

// Loads positions [t, t + m) of channel d (m <= UNROLL); z only if WITH_Z.
template <typename T, bool WITH_Z>
__device__ __forceinline__ void load_steps(Step<T> (&buf)[UNROLL], const T* __restrict__ uz,
                                           const T* __restrict__ delta, const T* __restrict__ dta,
                                           size_t i0, int m, int d, const Shape& s) {
#pragma unroll
    for (int j = 0; j < UNROLL; ++j) {
        if (j < m) {
            const size_t i = i0 + j;
            buf[j].u = uz[i * 2 * s.D + d];
            if (WITH_Z) buf[j].z = uz[i * 2 * s.D + s.D + d];
            buf[j].delta = delta[i * s.D + d];
            buf[j].dta = dta[i * s.D + d];
        }
    }
}

// The exp rules (mamba, zoh, dirac) chain chunks through exp(A * sum dtA), so
// phase 1 keeps one sum per thread; bilinear keeps the product per state.
template <int RULE> struct Carry {
    static constexpr bool PRODUCT = RULE == 2;
};

template <typename T, int NP, int RULE>
__device__ void scan_block(const T* __restrict__ uz, const T* __restrict__ delta, const T* __restrict__ dta,
                           const T* __restrict__ xdbl, const T* __restrict__ amat, const T* __restrict__ skip,
                           const T* __restrict__ h0, T* __restrict__ y, T* __restrict__ hlast, Shape s) {
    constexpr bool PRODUCT = Carry<RULE>::PRODUCT;
    extern __shared__ unsigned char smem_raw[];
    const int W = blockDim.x, C = blockDim.y;
    T* end = reinterpret_cast<T*>(smem_raw);  // [C][NP][W]
    T* prod = end + C * NP * W;               // [C][NP][W] (bilinear) or [C][W] (sums of dtA)
    const int x = threadIdx.x, c = threadIdx.y;
    const int d = blockIdx.x * W + x;
    const int b = blockIdx.y;
    const bool active = d < s.D;
    const int chunk = (s.L + C - 1) / C;
    const int t0 = min(c * chunk, s.L), t1 = min(t0 + chunk, s.L);
    const size_t row = (size_t)b * s.L;

    T a[NP];
#pragma unroll
    for (int n = 0; n < NP; ++n) a[n] = (active && n < s.N) ? amat[(size_t)d * s.N + n] : T(-1);

    // Phase 1: the chunk from a zero state.
    T h[NP], p[PRODUCT ? NP : 1];
#pragma unroll
    for (int n = 0; n < NP; ++n) h[n] = T(0);
#pragma unroll
    for (int n = 0; n < (PRODUCT ? NP : 1); ++n) p[n] = PRODUCT ? T(1) : T(0);
    if (active) {
        for (int t = t0; t < t1; t += UNROLL) {
            const int m = min(UNROLL, t1 - t);
            Step<T> buf[UNROLL];
            load_steps<T, false>(buf, uz, delta, dta, row + t, m, d, s);
#pragma unroll
            for (int j = 0; j < UNROLL; ++j) {
                if (j < m) {
                    const T* bt = xdbl + (row + t + j) * s.K + s.R;
                    const T du = buf[j].delta * buf[j].u;
                    if (!PRODUCT) p[0] += buf[j].dta;
#pragma unroll
                    for (int n = 0; n < NP; ++n) {
                        if (n < s.N) {
                            T abar, gain;
                            discretize<T, RULE>(buf[j].dta, buf[j].delta, a[n], abar, gain);
                            const T in = RULE == 0 ? du * bt[n] : gain * bt[n] * buf[j].u;
                            h[n] = abar * h[n] + in;
                            if (PRODUCT) p[n] *= abar;
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int n = 0; n < NP; ++n) {
        end[(c * NP + n) * W + x] = h[n];
        if (PRODUCT) prod[(c * NP + n) * W + x] = p[n];
    }
    if (!PRODUCT) prod[c * W + x] = p[0];
    __syncthreads();

    // Phase 2: one thread per channel chains the chunks; end[k] becomes the
    // state entering chunk k.
    const size_t state_at = ((size_t)b * ((s.D + 15) / 16) + d / 16) * s.N * 16 + d % 16;
    if (c == 0) {
#pragma unroll
        for (int n = 0; n < NP; ++n) {
            if (n < s.N) {
                T acc = active ? h0[state_at + (size_t)n * 16] : T(0);
                for (int k = 0; k < C; ++k) {
                    const T e = end[(k * NP + n) * W + x];
                    end[(k * NP + n) * W + x] = acc;
                    const T decay =
                        PRODUCT ? prod[(k * NP + n) * W + x] : Math<T>::exp(a[n] * prod[k * W + x]);
                    acc = decay * acc + e;
                }
                // Blocks cover whole lane groups of the state (W is a multiple
                // of 16): threads past D zero the padding lanes of the last group.
                if (d < (s.D + 15) / 16 * 16) hlast[state_at + (size_t)n * 16] = active ? acc : T(0);
            }
        }
    }
    __syncthreads();
    if (!active) return;

    // Phase 3: the chunk again from its entering state, writing y.
#pragma unroll
    for (int n = 0; n < NP; ++n) h[n] = end[(c * NP + n) * W + x];
    const T dskip = skip[d];
    for (int t = t0; t < t1; t += UNROLL) {
        const int m = min(UNROLL, t1 - t);
        Step<T> buf[UNROLL];
        load_steps<T, true>(buf, uz, delta, dta, row + t, m, d, s);
#pragma unroll
        for (int j = 0; j < UNROLL; ++j) {
            if (j < m) {
                const size_t i = row + t + j;
                const T* bt = xdbl + i * s.K + s.R;
                const T* ct = bt + s.N;
                const T du = buf[j].delta * buf[j].u;
                T acc = dskip * buf[j].u;
#pragma unroll
                for (int n = 0; n < NP; ++n) {
                    if (n < s.N) {
                        T abar, gain;
                        discretize<T, RULE>(buf[j].dta, buf[j].delta, a[n], abar, gain);
                        const T in = RULE == 0 ? du * bt[n] : gain * bt[n] * buf[j].u;
                        h[n] = abar * h[n] + in;
                        acc += ct[n] * h[n];
                    }
                }
                const T z = buf[j].z;
                y[i * s.D + d] = acc * (z / (T(1) + Math<T>::exp(-z)));
            }
        }
    }
}

#define SCAN_ENTRY(T, TN, NP, RULE)                                                                           \
    extern "C" __global__ void selective_scan_##TN##_n##NP##_r##RULE(                                        \
        const T* uz, const T* delta, const T* dta, const T* xdbl, const T* amat, const T* skip, const T* h0, \
        T* y, T* hlast, int L, int D, int N, int K, int R) {                                                 \
        scan_block<T, NP, RULE>(uz, delta, dta, xdbl, amat, skip, h0, y, hlast, Shape{L, D, N, K, R});       \
    }
INSTANTIATE_ALL(SCAN_ENTRY)
