// Device code of the upfirdn2d kernel, kept apart from the launcher so that the same source can
// also be compiled as plain C++ (host_emulation.cpp runs it on the CPU for the tests).
#pragma once

#include <cmath>

#include <ATen/AccumulateType.h>

#include "upfirdn2d.h"

namespace upfirdn2d_kernels {

struct Geometry {
    int64_t in_h, in_w, out_h, out_w;
    int64_t fh, fw;
    int64_t up_x, up_y, down_x, down_y;
    int64_t pad_x0, pad_y0;
};

// The geometry of one call, shared by the CUDA launcher and the host emulation. out_h / out_w
// are -1 when the padded input is smaller than the filter; callers reject that.
inline Geometry make_geometry(int64_t in_h, int64_t in_w, int64_t fh, int64_t fw, int64_t up_x, int64_t up_y,
                              int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1,
                              int64_t pad_y0, int64_t pad_y1) {
    Geometry g;
    g.in_h = in_h;
    g.in_w = in_w;
    g.fh = fh;
    g.fw = fw;
    g.up_x = up_x;
    g.up_y = up_y;
    g.down_x = down_x;
    g.down_y = down_y;
    g.pad_x0 = pad_x0;
    g.pad_y0 = pad_y0;
    const int64_t span_h = in_h * up_y + pad_y0 + pad_y1 - fh;
    const int64_t span_w = in_w * up_x + pad_x0 + pad_x1 - fw;
    g.out_h = span_h >= 0 ? span_h / down_y + 1 : -1;
    g.out_w = span_w >= 0 ? span_w / down_x + 1 : -1;
    return g;
}

template <typename scalar_t, typename tap_t>
__global__ void upfirdn2d_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ x,
                                 const tap_t* __restrict__ taps, int64_t numel, Geometry g) {
    using acc_t = at::acc_type<scalar_t, true>;
    const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < numel; index += step) {
        const int64_t ox = index % g.out_w;
        const int64_t oy = (index / g.out_w) % g.out_h;
        const int64_t plane = index / (g.out_w * g.out_h);
        const scalar_t* src = x + plane * g.in_h * g.in_w;
        acc_t sum = acc_t(0);
        for (int64_t i = 0; i < g.fh; ++i) {
            // Row in the zero-inserted signal (before padding) that tap row i reads.
            const int64_t zy = oy * g.down_y + i - g.pad_y0;
            if (zy < 0 || zy % g.up_y != 0) {
                continue;
            }
            const int64_t iy = zy / g.up_y;
            if (iy >= g.in_h) {
                continue;
            }
            for (int64_t j = 0; j < g.fw; ++j) {
                const int64_t zx = ox * g.down_x + j - g.pad_x0;
                if (zx < 0 || zx % g.up_x != 0) {
                    continue;
                }
                const int64_t ix = zx / g.up_x;
                if (ix >= g.in_w) {
                    continue;
                }
                sum += static_cast<acc_t>(src[iy * g.in_w + ix]) * static_cast<acc_t>(taps[i * g.fw + j]);
            }
        }
        out[index] = static_cast<scalar_t>(sum);
    }
}

}  // namespace upfirdn2d_kernels
