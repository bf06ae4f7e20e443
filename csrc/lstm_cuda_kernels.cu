// CUDA pointwise passes: the formulas of lstm_pointwise.h and gru_pointwise.h, one thread per
// element (b, j) of the [B, H] state, computing in float for the 16-bit
// types. Launched on the current stream of the current device (the ATen glue
// sets the device guard), 64-bit indexing, every launch checked.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "lstm_kernels.h"
#include "gru_pointwise.h"
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

// Element (b, j) of gate k of a view, and element (b, j) of a [B, H] view.
template <typename scalar_t, typename Ptr>
__device__ __forceinline__ scalar_t* gate_at(const GatesView<Ptr>& v, int64_t b, int k, int64_t j) {
  return static_cast<scalar_t*>(v.data) + b * v.row_stride + k * v.gate_stride + j;
}

template <typename scalar_t, typename Ptr>
__device__ __forceinline__ scalar_t* row_at(const RowsView<Ptr>& v, int64_t b, int64_t j) {
  return static_cast<scalar_t*>(v.data) + b * v.row_stride + j;
}

// f(b, j) for every element of the [batch, hidden] state, grid-stride.
template <typename F>
__device__ __forceinline__ void for_each_element(int64_t batch, int64_t hidden, const F& f) {
  const int64_t n = batch * hidden;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = idx / hidden;
    f(b, idx - b * hidden);
  }
}

template <typename scalar_t>
__global__ void forward_kernel(PointwiseForwardArgs a) {
  using opmath_t = at::opmath_type<scalar_t>;
  for_each_element(a.batch, a.hidden, [&](int64_t b, int64_t j) {
    opmath_t pre[4];
    for (int k = 0; k < 4; ++k) {
      pre[k] = *gate_at<const scalar_t>(a.preact, b, k, j);
      if (a.addend.data != nullptr) pre[k] += opmath_t(*gate_at<const scalar_t>(a.addend, b, k, j));
    }
    opmath_t i, f, gg, o, c, h;
    lstm_forward_point<opmath_t>(pre[0], pre[1], pre[2], pre[3], opmath_t(*row_at<const scalar_t>(a.c_prev, b, j)),
                                 i, f, gg, o, c, h);
    *gate_at<scalar_t>(a.gates, b, 0, j) = i;
    *gate_at<scalar_t>(a.gates, b, 1, j) = f;
    *gate_at<scalar_t>(a.gates, b, 2, j) = gg;
    *gate_at<scalar_t>(a.gates, b, 3, j) = o;
    *row_at<scalar_t>(a.c, b, j) = c;
    *row_at<scalar_t>(a.h, b, j) = h;
  });
}

template <typename scalar_t>
__global__ void backward_kernel(PointwiseBackwardArgs a) {
  using opmath_t = at::opmath_type<scalar_t>;
  for_each_element(a.batch, a.hidden, [&](int64_t b, int64_t j) {
    opmath_t di, df, dg, d_o, dcp;
    lstm_backward_point<opmath_t>(
        *gate_at<const scalar_t>(a.gates, b, 0, j), *gate_at<const scalar_t>(a.gates, b, 1, j),
        *gate_at<const scalar_t>(a.gates, b, 2, j), *gate_at<const scalar_t>(a.gates, b, 3, j),
        *row_at<const scalar_t>(a.c_prev, b, j), *row_at<const scalar_t>(a.c, b, j),
        *row_at<const scalar_t>(a.grad_h, b, j), *row_at<const scalar_t>(a.grad_c, b, j), di, df, dg, d_o, dcp);
    *gate_at<scalar_t>(a.grad_gates, b, 0, j) = di;
    *gate_at<scalar_t>(a.grad_gates, b, 1, j) = df;
    *gate_at<scalar_t>(a.grad_gates, b, 2, j) = dg;
    *gate_at<scalar_t>(a.grad_gates, b, 3, j) = d_o;
    *row_at<scalar_t>(a.grad_c_prev, b, j) = dcp;
  });
}

template <typename scalar_t>
__global__ void gru_forward_kernel(GruPointwiseForwardArgs a) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto* bias_hn = static_cast<const scalar_t*>(a.bias_hn);
  for_each_element(a.batch, a.hidden, [&](int64_t b, int64_t j) {
    const opmath_t hidden_n = opmath_t(*row_at<const scalar_t>(a.hidden_n_raw, b, j)) + opmath_t(bias_hn[j]);
    opmath_t r, z, n, h;
    gru_forward_point<opmath_t>(*gate_at<const scalar_t>(a.preact, b, 0, j), *gate_at<const scalar_t>(a.preact, b, 1, j),
                                *gate_at<const scalar_t>(a.preact, b, 2, j), hidden_n,
                                *row_at<const scalar_t>(a.h_prev, b, j), r, z, n, h);
    *gate_at<scalar_t>(a.gates, b, 0, j) = r;
    *gate_at<scalar_t>(a.gates, b, 1, j) = z;
    *gate_at<scalar_t>(a.gates, b, 2, j) = n;
    *row_at<scalar_t>(a.hidden_n, b, j) = hidden_n;
    *row_at<scalar_t>(a.h, b, j) = h;
  });
}

template <typename scalar_t>
__global__ void gru_backward_kernel(GruPointwiseBackwardArgs a) {
  using opmath_t = at::opmath_type<scalar_t>;
  for_each_element(a.batch, a.hidden, [&](int64_t b, int64_t j) {
    opmath_t dr, dz, dn, dhn, direct;
    gru_backward_point<opmath_t>(
        *gate_at<const scalar_t>(a.gates, b, 0, j), *gate_at<const scalar_t>(a.gates, b, 1, j),
        *gate_at<const scalar_t>(a.gates, b, 2, j), *row_at<const scalar_t>(a.hidden_n, b, j),
        *row_at<const scalar_t>(a.h_prev, b, j), *row_at<const scalar_t>(a.grad_h, b, j), dr, dz, dn, dhn, direct);
    *gate_at<scalar_t>(a.grad_input_gates, b, 0, j) = dr;
    *gate_at<scalar_t>(a.grad_input_gates, b, 1, j) = dz;
    *gate_at<scalar_t>(a.grad_input_gates, b, 2, j) = dn;
    *gate_at<scalar_t>(a.grad_hidden_gates, b, 0, j) = dr;
    *gate_at<scalar_t>(a.grad_hidden_gates, b, 1, j) = dz;
    *gate_at<scalar_t>(a.grad_hidden_gates, b, 2, j) = dhn;
    scalar_t* grad_h_prev = row_at<scalar_t>(a.grad_h_prev, b, j);
    *grad_h_prev = opmath_t(*grad_h_prev) + direct;
  });
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

void pointwise(const GruPointwiseForwardArgs& args) {
  const int64_t n = args.batch * args.hidden;
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.dtype, "lstm_ext_cuda_gru_forward", [&] {
    gru_forward_kernel<scalar_t><<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void pointwise(const GruPointwiseBackwardArgs& args) {
  const int64_t n = args.batch * args.hidden;
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.dtype, "lstm_ext_cuda_gru_backward", [&] {
    gru_backward_kernel<scalar_t><<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace lstm_ext
