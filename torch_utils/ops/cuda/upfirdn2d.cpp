// Python bindings of the upfirdn2d kernel (compiled lazily by torch_utils/custom_ops.py).
#include <torch/extension.h>

#include "upfirdn2d.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d_cuda, "zero-insert up-sampling, padding, FIR correlation, down-sampling");
}
