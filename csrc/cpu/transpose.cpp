// transpose.h's transposes, compiled per level (per_level.h) and called out
// of line by the routes that change a tensor's layout.
#include "transpose.h"

namespace custom_conv {

CUSTOM_CONV_PER_LEVEL(void, transpose_float, (const float* src, int64_t rows, int64_t cols, int64_t src_stride,
                                              float* dst, int64_t dst_stride),
                      (src, rows, cols, src_stride, dst, dst_stride)) {
  vectorised::transpose_body(src, rows, cols, src_stride, dst, dst_stride);
}
CUSTOM_CONV_PER_LEVEL(void, transpose_double, (const double* src, int64_t rows, int64_t cols, int64_t src_stride,
                                               double* dst, int64_t dst_stride),
                      (src, rows, cols, src_stride, dst, dst_stride)) {
  vectorised::transpose_body(src, rows, cols, src_stride, dst, dst_stride);
}
void transpose(const float* src, int64_t rows, int64_t cols, int64_t src_stride, float* dst, int64_t dst_stride) {
  transpose_float(src, rows, cols, src_stride, dst, dst_stride);
}
void transpose(const double* src, int64_t rows, int64_t cols, int64_t src_stride, double* dst,
               int64_t dst_stride) {
  transpose_double(src, rows, cols, src_stride, dst, dst_stride);
}

}  // namespace custom_conv
