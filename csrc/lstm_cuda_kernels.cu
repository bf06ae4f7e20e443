// CUDA pointwise passes: the formulas of lstm_pointwise.h, one thread per
// element (b, j) of the [B, H] state, computing in float for the 16-bit
// types. Launched on the current stream of the current device (the ATen glue
// sets the device guard), 64-bit indexing, every launch checked.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "lstm_kernels.h"
#include "lstm_pointwise.h"

namespace lstm_ext {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Enough blocks to fill every SM, no more: a grid-stride loop covers the rest,
// so small B*H still spreads over the SMs and large B*H does not launch
// millions of short-lived blocks.
unsigned grid_for(int64_t n) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t resident = int64_t(prop->multiProcessorCount) * (prop->maxThreadsPerMultiProcessor / kThreads);
  const int64_t needed = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(needed, resident)));
}

template <typename scalar_t>
__global__ void forward_kernel(PointwiseForwardArgs a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t H = a.hidden;
  const int64_t n = a.batch * H;
  auto* gates = static_cast<scalar_t*>(a.gates);
  const auto* addend = static_cast<const scalar_t*>(a.addend);
  const auto* c_prev = static_cast<const scalar_t*>(a.c_prev);
  auto* h_out = static_cast<scalar_t*>(a.h);
  auto* c_out = static_cast<scalar_t*>(a.c);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = idx / H;
    const int64_t j = idx - b * H;
    scalar_t* g = gates + b * a.gates_stride + j;
    opmath_t pre_i = g[0], pre_f = g[H], pre_g = g[2 * H], pre_o = g[3 * H];
    if (addend != nullptr) {
      const scalar_t* add = addend + b * a.addend_stride + j;
      pre_i += opmath_t(add[0]);
      pre_f += opmath_t(add[H]);
      pre_g += opmath_t(add[2 * H]);
      pre_o += opmath_t(add[3 * H]);
    }
    opmath_t i, f, gg, o, c, h;
    lstm_forward_point<opmath_t>(pre_i, pre_f, pre_g, pre_o, opmath_t(c_prev[b * a.c_prev_stride + j]),
                                 i, f, gg, o, c, h);
    g[0] = i;
    g[H] = f;
    g[2 * H] = gg;
    g[3 * H] = o;
    c_out[b * a.c_stride + j] = c;
    h_out[b * a.h_stride + j] = h;
  }
}

template <typename scalar_t>
__global__ void backward_kernel(PointwiseBackwardArgs a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t H = a.hidden;
  const int64_t n = a.batch * H;
  const auto* gates = static_cast<const scalar_t*>(a.gates);
  const auto* c_prev = static_cast<const scalar_t*>(a.c_prev);
  const auto* c_new = static_cast<const scalar_t*>(a.c);
  const auto* grad_h = static_cast<const scalar_t*>(a.grad_h);
  const auto* grad_c = static_cast<const scalar_t*>(a.grad_c);
  auto* grad_gates = static_cast<scalar_t*>(a.grad_gates);
  auto* grad_c_prev = static_cast<scalar_t*>(a.grad_c_prev);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = idx / H;
    const int64_t j = idx - b * H;
    const scalar_t* g = gates + b * a.gates_stride + j;
    opmath_t di, df, dg, d_o, dcp;
    lstm_backward_point<opmath_t>(g[0], g[H], g[2 * H], g[3 * H], c_prev[b * a.c_prev_stride + j],
                                  c_new[b * a.c_stride + j], grad_h[b * a.grad_h_stride + j],
                                  grad_c[b * a.grad_c_stride + j], di, df, dg, d_o, dcp);
    scalar_t* out = grad_gates + b * a.grad_gates_stride + j;
    out[0] = di;
    out[H] = df;
    out[2 * H] = dg;
    out[3 * H] = d_o;
    grad_c_prev[b * a.grad_c_prev_stride + j] = dcp;
  }
}

}  // namespace

void pointwise(const PointwiseForwardArgs& args) {
  const int64_t n = args.batch * args.hidden;
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.dtype, "lstm_ext_cuda_pointwise_forward", [&] {
    forward_kernel<scalar_t><<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void pointwise(const PointwiseBackwardArgs& args) {
  const int64_t n = args.batch * args.hidden;
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.dtype, "lstm_ext_cuda_pointwise_backward", [&] {
    backward_kernel<scalar_t><<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace lstm_ext
