// Raw-pointer launchers for the pointwise passes, one per backend.
//
// The ATen glue (lstm_ops.cpp) does the matrix products and allocation; these
// launchers only touch memory through the pointers and row strides below.
// Element stride inside a row is always 1.
#pragma once

#include <c10/core/ScalarType.h>
#include <cstdint>

namespace lstm_ext {

// Forward pass: gates holds the pre-activations [B, 4H] (i, f, g, o blocks of
// H) on entry and the activated gates on exit, which the backward needs.
// addend, when not null, is added to the pre-activations first: the bias
// (addend_stride 0) or a precomputed input projection (addend_stride 4H), so
// that neither needs a pass of its own.
struct PointwiseForwardArgs {
  c10::ScalarType dtype;
  int64_t batch;
  int64_t hidden;
  void* gates;
  int64_t gates_stride;
  const void* addend;
  int64_t addend_stride;
  const void* c_prev;
  int64_t c_prev_stride;
  void* h;
  int64_t h_stride;
  void* c;
  int64_t c_stride;
};

// Backward pass: from the activated gates, c_prev, c and the gradients of h and
// c, writes the gradients of the pre-activations [B, 4H] and of c_prev [B, H].
struct PointwiseBackwardArgs {
  c10::ScalarType dtype;
  int64_t batch;
  int64_t hidden;
  const void* gates;
  int64_t gates_stride;
  const void* c_prev;
  int64_t c_prev_stride;
  const void* c;
  int64_t c_stride;
  const void* grad_h;
  int64_t grad_h_stride;
  const void* grad_c;
  int64_t grad_c_stride;
  void* grad_gates;
  int64_t grad_gates_stride;
  void* grad_c_prev;
  int64_t grad_c_prev_stride;
};

namespace cpu {
// Chosen at run time for the CPU's capability (DEFAULT, AVX2, AVX512), as
// ATen's own kernels are.
void pointwise(const PointwiseForwardArgs& args);
void pointwise(const PointwiseBackwardArgs& args);

// The capability whose kernels run now, and a switch for tests and benchmarks.
const char* kernel_capability();
// Returns false when name is unknown, not compiled in, or unsupported here.
bool set_kernel_capability(const char* name);
// Every capability compiled into this build, comma-separated.
const char* compiled_capabilities();
}  // namespace cpu

#ifdef LSTM_EXT_WITH_CUDA
namespace cuda {
// Launched on the current CUDA stream of the current device.
void pointwise(const PointwiseForwardArgs& args);
void pointwise(const PointwiseBackwardArgs& args);
}  // namespace cuda
#endif

}  // namespace lstm_ext
