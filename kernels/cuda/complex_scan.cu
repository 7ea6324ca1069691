// Diagonal complex scan h_t = lambda * h_{t-1} + u_t in the "split" layout:
// u, h are (B, L, 2N) with real parts in [0, N) and imaginary parts in [N, 2N).
//
// One block owns W channels of one batch row and all of L, cut into C chunks
// (threadIdx.y). Three phases, all inside the block:
//   1. each thread scans its chunk from zero: end state e_c and lambda^len_c;
//   2. one thread per channel chains the C chunk carries (cheap, C steps);
//   3. each thread rescans its chunk from its carry and writes h.
// Phase 3 rereads u, which the block just read, so it comes from L2: DRAM
// traffic stays one read of u and one write of h.
#include "complex.cuh"

// Timesteps loaded ahead per thread.
#define UNROLL 8

template <typename T>
__device__ __forceinline__ void scan_kernel(const T* __restrict__ u, const T* __restrict__ lam,
                                            const T* __restrict__ h0, T* __restrict__ h, int L, int N,
                                            int reverse, int conj) {
    extern __shared__ unsigned char smem_raw[];
    const int W = blockDim.x, C = blockDim.y;
    const int x = threadIdx.x, c = threadIdx.y;
    const int n = blockIdx.x * W + x;
    const int b = blockIdx.y;
    cpx<T>* end = reinterpret_cast<cpx<T>*>(smem_raw);  // [C][W]
    cpx<T>* pw = end + C * W;                            // [C][W]
    cpx<T>* carry = pw + C * W;                          // [C][W]
    const bool active = n < N;
    const int chunk = (L + C - 1) / C;
    const int t0 = min(c * chunk, L), t1 = min(t0 + chunk, L);
    cpx<T> l = {T(0), T(0)};
    if (active) l = {lam[n], conj ? -lam[N + n] : lam[N + n]};
    const size_t row = 2 * (size_t)N;
    const T* ub = u + (size_t)b * L * row;
    T* hb = h + (size_t)b * L * row;

    cpx<T> s = {T(0), T(0)}, p = {T(1), T(0)};
    if (active) {
        // Loads are independent of the recurrence: issue UNROLL of them before
        // using any, so that enough bytes are in flight to cover DRAM latency.
        int i = t0;
        for (; i + UNROLL <= t1; i += UNROLL) {
            cpx<T> buf[UNROLL];
#pragma unroll
            for (int j = 0; j < UNROLL; ++j) {
                const int t = reverse ? L - 1 - (i + j) : i + j;
                buf[j] = {ub[t * row + n], ub[t * row + N + n]};
            }
#pragma unroll
            for (int j = 0; j < UNROLL; ++j) {
                s = cfma(l, s, buf[j]);
                p = cmul(p, l);
            }
        }
        for (; i < t1; ++i) {
            const int t = reverse ? L - 1 - i : i;
            const cpx<T> ut = {ub[t * row + n], ub[t * row + N + n]};
            s = cfma(l, s, ut);
            p = cmul(p, l);
        }
    }
    end[c * W + x] = s;
    pw[c * W + x] = p;
    __syncthreads();
    if (c == 0) {
        cpx<T> acc = {T(0), T(0)};
        if (active) acc = {h0[(size_t)b * row + n], h0[(size_t)b * row + N + n]};
        for (int k = 0; k < C; ++k) {
            carry[k * W + x] = acc;
            acc = cfma(pw[k * W + x], acc, end[k * W + x]);
        }
    }
    __syncthreads();
    if (!active) return;
    s = carry[c * W + x];
    int i = t0;
    for (; i + UNROLL <= t1; i += UNROLL) {
        cpx<T> buf[UNROLL];
#pragma unroll
        for (int j = 0; j < UNROLL; ++j) {
            const int t = reverse ? L - 1 - (i + j) : i + j;
            buf[j] = {ub[t * row + n], ub[t * row + N + n]};
        }
#pragma unroll
        for (int j = 0; j < UNROLL; ++j) {
            const int t = reverse ? L - 1 - (i + j) : i + j;
            s = cfma(l, s, buf[j]);
            hb[t * row + n] = s.re;
            hb[t * row + N + n] = s.im;
        }
    }
    for (; i < t1; ++i) {
        const int t = reverse ? L - 1 - i : i;
        const cpx<T> ut = {ub[t * row + n], ub[t * row + N + n]};
        s = cfma(l, s, ut);
        hb[t * row + n] = s.re;
        hb[t * row + N + n] = s.im;
    }
}

extern "C" __global__ void complex_scan_f32(const float* u, const float* lam, const float* h0, float* h, int L,
                                            int N, int reverse, int conj) {
    scan_kernel<float>(u, lam, h0, h, L, N, reverse, conj);
}

extern "C" __global__ void complex_scan_f64(const double* u, const double* lam, const double* h0, double* h,
                                            int L, int N, int reverse, int conj) {
    scan_kernel<double>(u, lam, h0, h, L, N, reverse, conj);
}
