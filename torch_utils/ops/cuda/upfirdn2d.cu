// CUDA kernel of upfirdn2d: one thread per output sample (grid-stride loop) that walks the taps
// and reads only the input samples the zero insertion did not blank out.  Simple rather than
// fast: no shared-memory tiling, no polyphase decomposition.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "upfirdn2d.h"
#include "upfirdn2d_kernel.cuh"

using namespace upfirdn2d_kernels;

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& taps, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1,
                          int64_t pad_y0, int64_t pad_y1) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 4 && x.is_contiguous(), "upfirdn2d: x must be a contiguous 4-D CUDA tensor");
    TORCH_CHECK(taps.dim() == 2 && taps.is_contiguous() && taps.device() == x.device(),
                "upfirdn2d: taps must be a contiguous 2-D tensor on x's device");
    const auto tap_type = x.scalar_type() == at::ScalarType::Double ? at::ScalarType::Double : at::ScalarType::Float;
    TORCH_CHECK(taps.scalar_type() == tap_type, "upfirdn2d: taps must be float32 (float64 for float64 x)");
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: factors must be >= 1");

    const Geometry g = make_geometry(x.size(2), x.size(3), taps.size(0), taps.size(1), up_x, up_y, down_x, down_y,
                                     pad_x0, pad_x1, pad_y0, pad_y1);
    TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "upfirdn2d: padded input is smaller than the filter");

    const c10::cuda::CUDAGuard device_guard(x.device());
    at::Tensor out = at::empty({x.size(0), x.size(1), g.out_h, g.out_w}, x.options());
    const int64_t numel = out.numel();
    if (numel == 0) {
        return out;
    }
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((numel + threads - 1) / threads, int64_t(1) << 16);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
        if (tap_type == at::ScalarType::Double) {
            upfirdn2d_kernel<scalar_t, double><<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(
                out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), taps.data_ptr<double>(), numel, g);
        } else {
            upfirdn2d_kernel<scalar_t, float><<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(
                out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), taps.data_ptr<float>(), numel, g);
        }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
