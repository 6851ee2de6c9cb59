// Runs the device code of bias_act_kernel.cuh and upfirdn2d_kernel.cuh on the CPU, with a single
// "thread" whose grid-stride loop covers every element, so the kernels' index arithmetic and
// maths can be checked against the references on a machine without a GPU
// (tests/test_ops.py::test_cuda_kernel_code_emulated_on_cpu, marked slow).  Not used at run time.
#include <torch/extension.h>

#include <algorithm>

namespace {
struct Dim3 {
    unsigned int x;
};
const Dim3 blockIdx{0}, threadIdx{0}, blockDim{1}, gridDim{1};
}  // namespace

#define __global__
#define __device__
#define __forceinline__ inline

#include "bias_act_kernel.cuh"
#include "upfirdn2d_kernel.cuh"

static at::Tensor emulate_bias_act(const at::Tensor& x, const at::Tensor& b, const at::Tensor& dy, int64_t dim,
                                   int64_t act, double alpha, double gain, double clamp, bool grad_mode) {
    TORCH_CHECK(x.is_contiguous() && dy.is_contiguous() && b.is_contiguous());
    at::Tensor out = at::empty(x.sizes(), x.options());
    int64_t bias_stride = 1;
    for (int64_t d = dim + 1; d < x.dim(); ++d) {
        bias_stride *= x.size(d);
    }
    const bool has_bias = b.numel() > 0;
    AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::Half, x.scalar_type(), "emulate_bias_act", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        bias_act_kernels::bias_act_kernel<scalar_t>(
            out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), has_bias ? b.data_ptr<scalar_t>() : nullptr,
            grad_mode ? dy.data_ptr<scalar_t>() : nullptr, x.numel(), has_bias ? b.size(0) : 1, bias_stride,
            static_cast<int>(act), static_cast<acc_t>(alpha), static_cast<acc_t>(gain), static_cast<acc_t>(clamp),
            grad_mode);
    });
    return out;
}

static at::Tensor emulate_upfirdn2d(const at::Tensor& x, const at::Tensor& taps, int64_t up_x, int64_t up_y,
                                    int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1,
                                    int64_t pad_y0, int64_t pad_y1) {
    TORCH_CHECK(x.is_contiguous() && taps.is_contiguous() && taps.scalar_type() == at::ScalarType::Double);
    const upfirdn2d_kernels::Geometry g = upfirdn2d_kernels::make_geometry(
        x.size(2), x.size(3), taps.size(0), taps.size(1), up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1);
    TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "upfirdn2d: padded input is smaller than the filter");
    at::Tensor out = at::empty({x.size(0), x.size(1), g.out_h, g.out_w}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "emulate_upfirdn2d", [&] {
        upfirdn2d_kernels::upfirdn2d_kernel<scalar_t, double>(
            out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), taps.data_ptr<double>(), out.numel(), g);
    });
    return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &emulate_bias_act);
    m.def("upfirdn2d", &emulate_upfirdn2d);
}
