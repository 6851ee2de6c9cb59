// Device code of the bias_act kernel, kept apart from the launcher so that the same source can
// also be compiled as plain C++ (host_emulation.cpp runs it on the CPU for the tests).
#pragma once

#include <cmath>

#include <ATen/AccumulateType.h>

#include "bias_act.h"

namespace bias_act_kernels {

constexpr double kSeluScale = 1.0507009873554805;
constexpr double kSeluAlpha = 1.6732632423543772;

__device__ __forceinline__ float dev_exp(float v) { return expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return exp(v); }
__device__ __forceinline__ float dev_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double dev_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float dev_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double dev_log1p(double v) { return log1p(v); }
__device__ __forceinline__ float dev_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double dev_tanh(double v) { return tanh(v); }

template <typename T>
__device__ __forceinline__ T dev_sigmoid(T v) {
    return T(1) / (T(1) + dev_exp(-v));
}

// act(v)
template <typename T>
__device__ __forceinline__ T activation(int act, T v, T alpha) {
    switch (act) {
        case kActRelu: return v > T(0) ? v : T(0);
        case kActLrelu: return v > T(0) ? v : v * alpha;
        case kActTanh: return dev_tanh(v);
        case kActSigmoid: return dev_sigmoid(v);
        case kActElu: return v > T(0) ? v : dev_expm1(v);
        case kActSelu: return T(kSeluScale) * (v > T(0) ? v : T(kSeluAlpha) * dev_expm1(v));
        // torch's softplus switches to the identity above 20 to avoid overflow; so do we.
        case kActSoftplus: return v > T(20) ? v : dev_log1p(dev_exp(v));
        case kActSwish: return v * dev_sigmoid(v);
        default: return v;
    }
}

// act'(v); at the kinks the slope is the one torch's autograd uses (0 for relu, alpha for lrelu).
template <typename T>
__device__ __forceinline__ T activation_slope(int act, T v, T alpha) {
    switch (act) {
        case kActRelu: return v > T(0) ? T(1) : T(0);
        case kActLrelu: return v > T(0) ? T(1) : alpha;
        case kActTanh: { T t = dev_tanh(v); return T(1) - t * t; }
        case kActSigmoid: { T s = dev_sigmoid(v); return s * (T(1) - s); }
        case kActElu: return v > T(0) ? T(1) : dev_exp(v);
        case kActSelu: return T(kSeluScale) * (v > T(0) ? T(1) : T(kSeluAlpha) * dev_exp(v));
        case kActSoftplus: return v > T(20) ? T(1) : dev_sigmoid(v);
        case kActSwish: { T s = dev_sigmoid(v); return s * (T(1) + v * (T(1) - s)); }
        default: return T(1);
    }
}

template <typename scalar_t>
__global__ void bias_act_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                const scalar_t* __restrict__ b, const scalar_t* __restrict__ dy,
                                int64_t numel, int64_t bias_len, int64_t bias_stride, int act,
                                at::acc_type<scalar_t, true> alpha, at::acc_type<scalar_t, true> gain,
                                at::acc_type<scalar_t, true> clamp, bool grad_mode) {
    using acc_t = at::acc_type<scalar_t, true>;
    const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
        acc_t v = static_cast<acc_t>(x[i]);
        if (b != nullptr) {
            v += static_cast<acc_t>(b[(i / bias_stride) % bias_len]);
        }
        acc_t y = activation<acc_t>(act, v, alpha) * gain;
        if (!grad_mode) {
            if (clamp >= acc_t(0)) {
                y = y > clamp ? clamp : (y < -clamp ? -clamp : y);
            }
            out[i] = static_cast<scalar_t>(y);
        } else {
            acc_t g = static_cast<acc_t>(dy[i]) * gain * activation_slope<acc_t>(act, v, alpha);
            // torch.clamp lets the gradient through on the closed interval [-clamp, clamp].
            if (clamp >= acc_t(0) && !(y >= -clamp && y <= clamp)) {
                g = acc_t(0);
            }
            out[i] = static_cast<scalar_t>(g);
        }
    }
}

}  // namespace bias_act_kernels
