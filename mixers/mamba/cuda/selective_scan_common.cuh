// What the selective scan's forward (selective_scan.cu) and backward
// (selective_scan_bwd.cu) kernels share: fast math per dtype, the sizes, and
// the discretization rules with their derivatives.
#pragma once
#include <cuda_runtime.h>

template <typename T> struct Math;
template <> struct Math<float> {
    static __device__ __forceinline__ float exp(float x) { return __expf(x); }
    static __device__ __forceinline__ float expm1(float x) { return ::expm1f(x); }
};
template <> struct Math<double> {
    static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
    static __device__ __forceinline__ double expm1(double x) { return ::expm1(x); }
};

struct Shape {
    int L, D, N, K, R;
};

// Abar and gain of one state entry under rule RULE.
template <typename T, int RULE>
__device__ __forceinline__ void discretize(T dta, T delta, T a, T& abar, T& gain) {
    if (RULE == 2) {
        const T half = T(0.5);
        abar = (T(1) + dta * a * half) / (T(1) - dta * a * half);
        gain = delta / (T(1) - delta * a * half);
        return;
    }
    abar = Math<T>::exp(dta * a);
    gain = RULE == 0 ? delta : RULE == 1 ? Math<T>::expm1(delta * a) / a : T(1);
}

// The partial derivatives of Abar (by x = dtA * A) and of gain (by delta and
// by A) under rule RULE, given the values discretize() returned.
template <typename T, int RULE>
__device__ __forceinline__ void discretize_grad(T dta, T delta, T a, T abar, T& dabar_dx, T& dgain_ddelta,
                                                T& dgain_da) {
    if (RULE == 2) {
        const T q = T(1) / (T(1) - dta * a * T(0.5));
        dabar_dx = q * q;
        const T r = T(1) / (T(1) - delta * a * T(0.5));
        dgain_ddelta = r * r;
        dgain_da = T(0.5) * delta * delta * r * r;
        return;
    }
    dabar_dx = abar;
    if (RULE == 0) {
        dgain_ddelta = T(1);
        dgain_da = T(0);
    } else if (RULE == 1) {
        const T x = delta * a;
        const T e = Math<T>::exp(x);
        dgain_ddelta = e;
        dgain_da = (x * e - Math<T>::expm1(x)) / (a * a);
    } else {
        dgain_ddelta = T(0);
        dgain_da = T(0);
    }
}

// Every kernel is instantiated per dtype (f32, f64), compiled state size NP
// (the Rust side's STATE_SIZES) and rule: ENTRY(T, TN, NP, RULE) defines one.
#define INSTANTIATE_RULES(ENTRY, T, TN, NP) ENTRY(T, TN, NP, 0) ENTRY(T, TN, NP, 1) ENTRY(T, TN, NP, 2) ENTRY(T, TN, NP, 3)
#define INSTANTIATE_SIZES(ENTRY, T, TN)                                                           \
    INSTANTIATE_RULES(ENTRY, T, TN, 4) INSTANTIATE_RULES(ENTRY, T, TN, 8) INSTANTIATE_RULES(ENTRY, T, TN, 16) \
    INSTANTIATE_RULES(ENTRY, T, TN, 32) INSTANTIATE_RULES(ENTRY, T, TN, 64)
#define INSTANTIATE_ALL(ENTRY) INSTANTIATE_SIZES(ENTRY, float, f32) INSTANTIATE_SIZES(ENTRY, double, f64)
