// CUDA kernel of bias_act: one thread per element (grid-stride loop), arithmetic in float
// (double for double inputs) whatever the storage type.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "bias_act.h"
#include "bias_act_kernel.cuh"

using namespace bias_act_kernels;

at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& dy, int64_t dim,
                         int64_t act, double alpha, double gain, double clamp, bool grad_mode) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(x.is_contiguous(), "bias_act: x must be contiguous");
    TORCH_CHECK(x.dim() == 0 ? dim == 0 : (dim >= 0 && dim < x.dim()), "bias_act: dim out of range");
    TORCH_CHECK(act >= kActLinear && act <= kActSwish, "bias_act: unknown activation code ", act);
    const bool has_bias = b.defined() && b.numel() > 0;
    if (has_bias) {
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must have x.size(dim) entries");
        TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(),
                    "bias_act: b must match x's device and dtype");
    }
    if (grad_mode) {
        TORCH_CHECK(dy.sizes() == x.sizes() && dy.device() == x.device() && dy.scalar_type() == x.scalar_type(),
                    "bias_act: dy must match x's shape, device and dtype");
        TORCH_CHECK(dy.is_contiguous(), "bias_act: dy must be contiguous");
    }

    const c10::cuda::CUDAGuard device_guard(x.device());
    at::Tensor out = at::empty(x.sizes(), x.options());
    const int64_t numel = x.numel();
    if (numel == 0) {
        return out;
    }
    const at::Tensor bias = has_bias ? b.contiguous() : b;
    int64_t bias_stride = 1;
    for (int64_t d = dim + 1; d < x.dim(); ++d) {
        bias_stride *= x.size(d);
    }
    const int64_t bias_len = has_bias ? b.size(0) : 1;

    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((numel + threads - 1) / threads, int64_t(1) << 16);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "bias_act_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        bias_act_kernel<scalar_t><<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(
            out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
            has_bias ? bias.data_ptr<scalar_t>() : nullptr,
            grad_mode ? dy.data_ptr<scalar_t>() : nullptr,
            numel, bias_len, bias_stride, static_cast<int>(act),
            static_cast<acc_t>(alpha), static_cast<acc_t>(gain), static_cast<acc_t>(clamp), grad_mode);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}
