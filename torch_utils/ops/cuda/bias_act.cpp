// Python bindings of the bias_act kernel (compiled lazily by torch_utils/custom_ops.py).
#include <torch/extension.h>

#include "bias_act.h"

static at::Tensor bias_act_forward(const at::Tensor& x, const at::Tensor& b, int64_t dim, int64_t act,
                                   double alpha, double gain, double clamp) {
    // dy is unused in forward mode; x stands in so every argument is a defined tensor.
    return bias_act_cuda(x, b, x, dim, act, alpha, gain, clamp, /*grad_mode=*/false);
}

static at::Tensor bias_act_grad(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& b, int64_t dim,
                                int64_t act, double alpha, double gain, double clamp) {
    return bias_act_cuda(x, b, dy, dim, act, alpha, gain, clamp, /*grad_mode=*/true);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act_forward", &bias_act_forward, "y = clamp(gain * act(x + b))");
    m.def("bias_act_grad", &bias_act_grad, "dx = dy * gain * act'(x + b) * clamp mask");
}
