// Fused bias + activation + gain + clamp on CUDA; see torch_utils/ops/bias_act.py for the maths.
#pragma once

#include <ATen/ATen.h>

// Activation codes, shared with activation_funcs[...].cuda_idx in bias_act.py.
enum BiasActActivation : int {
    kActLinear = 1, kActRelu = 2, kActLrelu = 3, kActTanh = 4, kActSigmoid = 5,
    kActElu = 6, kActSelu = 7, kActSoftplus = 8, kActSwish = 9
};

// grad_mode = false: returns clamp(gain * act(x + b)).
// grad_mode = true:  returns dy * gain * act'(x + b) * [|gain * act(x + b)| <= clamp].
// x (and dy) contiguous CUDA tensors; b is 1-D with x.size(dim) entries, or empty for no bias;
// clamp < 0 disables clamping.
at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& dy, int64_t dim,
                         int64_t act, double alpha, double gain, double clamp, bool grad_mode);
