// Up-sample, FIR-filter, down-sample on CUDA; see torch_utils/ops/upfirdn2d.py for the maths.
#pragma once

#include <ATen/ATen.h>

// x: [N, C, H, W] contiguous CUDA tensor.  taps: [fh, fw] correlation weights (already flipped
// and scaled by the caller), float32 (float64 when x is float64).  Returns
// [N, C, (H*up_y + pad_y0 + pad_y1 - fh) / down_y + 1, (W*up_x + pad_x0 + pad_x1 - fw) / down_x + 1]:
//   out[oy, ox] = sum_{i, j} taps[i, j] * z[oy*down_y + i, ox*down_x + j]
// where z is x with up-1 zeros after each sample, padded by (pad_x0, pad_y0) in front
// (negative = cropped) and by zeros everywhere outside.
at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& taps, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1,
                          int64_t pad_y0, int64_t pad_y1);
