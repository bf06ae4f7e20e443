// CUDA pointwise passes: the formulas of lstm_pointwise.h and gru_pointwise.h,
// one thread per element (b, j) of the [B, H] state, computing in float for
// the 16-bit types; and the LayerNorm LSTM's row passes
// (layernorm_lstm_pointwise.h), one thread block per row, whose layer norms
// reduce over the row. Launched on the current stream of the current device
// (the ATen glue sets the device guard), 64-bit indexing, every launch
// checked.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "lstm_kernels.h"
#include "gru_pointwise.h"
#include "layernorm_lstm_pointwise.h"
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
    lstm_forward_point</*kRounded=*/false, opmath_t>(
        pre[0], pre[1], pre[2], pre[3], opmath_t(*row_at<const scalar_t>(a.c_prev, b, j)), i, f, gg, o, c, h);
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

// ---- The LayerNorm LSTM's row passes ---------------------------------------
// One block per row: a row's layer norms need all its 4H (or H) entries, and
// a row of a few thousand floats stays in L1 between the passes over it.
// Every thread takes the same columns j in each pass over [0, H), so what a
// thread wrote there it reads back without a barrier; a barrier comes before
// a pass that reads other threads' columns.

constexpr int kMaxRowThreads = 256;

// One warp for small rows, up to kMaxRowThreads for wide ones.
int row_threads(int64_t hidden) {
  const int64_t warps = std::min<int64_t>(kMaxRowThreads / 32, std::max<int64_t>(1, (hidden + 31) / 32));
  return static_cast<int>(warps * 32);
}

// The sum of v over the block, in every thread (the same order in each).
template <typename T>
__device__ T block_sum(T v, T* shared) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  __syncthreads();  // shared may still be read by a previous call
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < int(blockDim.x / 32); ++w) total += shared[w];
  return total;
}

// Mean and 1 / sqrt(biased variance + eps) of x[0, n), two passes, as the
// CPU's row_moments.
template <typename T>
__device__ void block_moments(const T* x, int64_t n, double eps, T* shared, T& mean, T& rstd) {
  T total = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) total += x[j];
  mean = block_sum(total, shared) / static_cast<T>(n);
  T squares = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const T d = x[j] - mean;
    squares += d * d;
  }
  squares = block_sum(squares, shared);
  rstd = static_cast<T>(1.0 / sqrt(static_cast<double>(squares) / static_cast<double>(n) + eps));
}

// The cell's gains and shift, typed, and zoneout's d for one row.
template <typename T>
struct RowCell {
  const T *gamma_hh, *gamma_c, *beta_c, *mask_c, *mask_h;
  T rate_c, rate_h;
  __device__ RowCell(const cpu::LnCellParams& p, int64_t row, int64_t hidden)
      : gamma_hh(static_cast<const T*>(p.gamma_hh)), gamma_c(static_cast<const T*>(p.gamma_c)),
        beta_c(static_cast<const T*>(p.beta_c)),
        mask_c(p.mask_c != nullptr ? static_cast<const T*>(p.mask_c) + row * hidden : nullptr),
        mask_h(p.mask_h != nullptr ? static_cast<const T*>(p.mask_h) + row * hidden : nullptr),
        rate_c(static_cast<T>(p.rate_c)), rate_h(static_cast<T>(p.rate_h)) {}
  // d at column j: the row's mask, or the constant rate.
  __device__ T d_c(int64_t j) const { return mask_c != nullptr ? mask_c[j] : rate_c; }
  __device__ T d_h(int64_t j) const { return mask_h != nullptr ? mask_h[j] : rate_h; }
};

template <typename T>
__global__ void ln_rows_forward_kernel(cpu::LnRowsForwardArgs a) {
  __shared__ T shared[kMaxRowThreads / 32];
  const int64_t H = a.hidden, G = 4 * H, r = blockIdx.x;
  const bool layer_norm = a.cell.layer_norm;
  T* gates = static_cast<T*>(a.gates) + r * G;
  T* hh = layer_norm ? static_cast<T*>(a.hh) + r * G : nullptr;
  const T* c_prev = static_cast<const T*>(a.c_prev) + r * H;
  const T* h_prev = static_cast<const T*>(a.h_prev) + r * H;
  T* c = static_cast<T*>(a.c) + r * H;
  T* h = static_cast<T*>(a.h) + r * H;
  const RowCell<T> cell(a.cell, r, H);
  T mean_hh = 0, rstd_hh = 1;
  if (layer_norm) block_moments(hh, G, a.eps, shared, mean_hh, rstd_hh);
  // The gates and c~ (into c for now).
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    T pre[4];
    for (int k = 0; k < 4; ++k) {
      pre[k] = gates[k * H + j];
      if (layer_norm) {
        const T x_hat = (hh[k * H + j] - mean_hh) * rstd_hh;
        hh[k * H + j] = x_hat;
        pre[k] = pre[k] + cell.gamma_hh[k * H + j] * x_hat;
      }
    }
    T i, f, g, o, c_candidate;
    ln_lstm_gates_point(pre[0], pre[1], pre[2], pre[3], c_prev[j], i, f, g, o, c_candidate);
    gates[j] = i;
    gates[H + j] = f;
    gates[2 * H + j] = g;
    gates[3 * H + j] = o;
    c[j] = c_candidate;
  }
  T mean_c = 0, rstd_c = 1;
  if (layer_norm) block_moments<T>(c, H, a.eps, shared, mean_c, rstd_c);  // each thread's own columns of c
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const T c_candidate = c[j];
    const T y = layer_norm ? (c_candidate - mean_c) * rstd_c * cell.gamma_c[j] + cell.beta_c[j] : c_candidate;
    const T h_candidate = gates[3 * H + j] * lstm_tanh(y);
    c[j] = zoneout_point(c_candidate, c_prev[j], cell.d_c(j));
    h[j] = zoneout_point(h_candidate, h_prev[j], cell.d_h(j));
  }
  if (layer_norm && threadIdx.x == 0) {
    T* stats = static_cast<T*>(a.stats) + r * 3;
    stats[0] = rstd_hh;
    stats[1] = mean_c;
    stats[2] = rstd_c;
  }
}

template <typename T>
__global__ void ln_rows_backward_kernel(cpu::LnRowsBackwardArgs a) {
  __shared__ T shared[kMaxRowThreads / 32];
  const int64_t H = a.hidden, G = 4 * H, r = blockIdx.x;
  const bool layer_norm = a.cell.layer_norm;
  const T* gates = static_cast<const T*>(a.gates) + r * G;
  const T* c_prev = static_cast<const T*>(a.c_prev) + r * H;
  const T* grad_h = static_cast<const T*>(a.grad_h) + r * H;
  const RowCell<T> cell(a.cell, r, H);
  T* grad_c = static_cast<T*>(a.grad_c) + r * H;
  T* grad_pre = static_cast<T*>(a.grad_pre) + r * G;
  T* grad_h_prev = a.grad_h_prev != nullptr ? static_cast<T*>(a.grad_h_prev) + r * H : nullptr;
  // This row's share of the gains' gradients (gamma_row_stride > 0: its own row).
  T* grad_gamma_hh = layer_norm ? static_cast<T*>(a.grad_gamma_hh) + r * a.gamma_row_stride : nullptr;
  T* grad_gamma_c = layer_norm ? static_cast<T*>(a.grad_gamma_c) + r * a.gamma_row_stride : nullptr;
  T* grad_beta_c = layer_norm ? static_cast<T*>(a.grad_beta_c) + r * a.gamma_row_stride : nullptr;
  const T one(1);
  T mean_c = 0, rstd_c = 1;
  if (layer_norm) {
    mean_c = static_cast<const T*>(a.stats)[r * 3 + 1];
    rstd_c = static_cast<const T*>(a.stats)[r * 3 + 2];
  }
  // Pass 1: o's gradient, and the gradient of c~'s normalized value (into
  // grad_pre's i block for now) with its row sums.
  T sum_gx = 0, sum_gx_x = 0;
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    const T c_candidate = ln_lstm_candidate(gates[j], gates[H + j], gates[2 * H + j], c_prev[j]);
    const T x_c = (c_candidate - mean_c) * rstd_c;
    const T gh = grad_h[j];
    const T d_h = cell.d_h(j);
    if (grad_h_prev != nullptr) grad_h_prev[j] = grad_h_prev[j] + d_h * gh;
    const T y = layer_norm ? x_c * cell.gamma_c[j] + cell.beta_c[j] : c_candidate;
    T grad_pre_o, grad_y;
    ln_lstm_output_backward_point(gates[3 * H + j], y, (one - d_h) * gh, grad_pre_o, grad_y);
    grad_pre[3 * H + j] = grad_pre_o;
    if (layer_norm) {
      grad_gamma_c[j] = grad_gamma_c[j] + grad_y * x_c;
      grad_beta_c[j] = grad_beta_c[j] + grad_y;
      const T gx = grad_y * cell.gamma_c[j];
      sum_gx += gx;
      sum_gx_x += gx * x_c;
      grad_pre[j] = gx;
    } else {
      grad_pre[j] = grad_y;
    }
  }
  if (layer_norm) {
    sum_gx = block_sum(sum_gx, shared);
    sum_gx_x = block_sum(sum_gx_x, shared);
  }
  // Pass 2: c~'s gradient, then those of i, f, g and of c_prev.
  const T mean_gx = sum_gx / static_cast<T>(H), mean_gx_x = sum_gx_x / static_cast<T>(H);
  for (int64_t j = threadIdx.x; j < H; j += blockDim.x) {
    T grad_candidate = grad_pre[j];
    if (layer_norm) {
      const T c_candidate = ln_lstm_candidate(gates[j], gates[H + j], gates[2 * H + j], c_prev[j]);
      grad_candidate = layer_norm_backward_point(grad_candidate, (c_candidate - mean_c) * rstd_c, rstd_c, mean_gx,
                                                 mean_gx_x);
    }
    const T gc = grad_c[j];
    const T d_c = cell.d_c(j);
    grad_candidate = grad_candidate + (one - d_c) * gc;
    T gi, gf, gg, gc_prev;
    ln_lstm_cell_backward_point(gates[j], gates[H + j], gates[2 * H + j], c_prev[j], grad_candidate, gi, gf, gg,
                                gc_prev);
    grad_pre[j] = gi;
    grad_pre[H + j] = gf;
    grad_pre[2 * H + j] = gg;
    grad_c[j] = gc_prev + d_c * gc;
  }
  if (!layer_norm) return;
  // The recurrent product's layer norm: gain gradient, then the product's.
  __syncthreads();  // grad_pre's columns were written by other threads
  const T* x_hh = static_cast<const T*>(a.hh_norm) + r * G;
  T* grad_hh = static_cast<T*>(a.grad_hh) + r * G;
  const T rstd_hh = static_cast<const T*>(a.stats)[r * 3];
  T sum_g = 0, sum_g_x = 0;
  for (int64_t j = threadIdx.x; j < G; j += blockDim.x) {
    const T ga = grad_pre[j], x = x_hh[j];
    grad_gamma_hh[j] = grad_gamma_hh[j] + ga * x;
    const T gx = ga * cell.gamma_hh[j];
    sum_g += gx;
    sum_g_x += gx * x;
  }
  sum_g = block_sum(sum_g, shared);
  sum_g_x = block_sum(sum_g_x, shared);
  const T mean_g = sum_g / static_cast<T>(G), mean_g_x = sum_g_x / static_cast<T>(G);
  for (int64_t j = threadIdx.x; j < G; j += blockDim.x) {
    grad_hh[j] = layer_norm_backward_point(grad_pre[j] * cell.gamma_hh[j], x_hh[j], rstd_hh, mean_g, mean_g_x);
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

void rows_pass(const cpu::LnRowsForwardArgs& args) {
  if (args.rows == 0 || args.hidden == 0) return;
  AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_cuda_ln_rows_forward", [&] {
    ln_rows_forward_kernel<scalar_t><<<static_cast<unsigned>(args.rows), row_threads(args.hidden), 0,
                                       at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void rows_pass(const cpu::LnRowsBackwardArgs& args) {
  if (args.rows == 0 || args.hidden == 0) return;
  TORCH_INTERNAL_ASSERT(!args.cell.layer_norm || args.gamma_row_stride > 0,
                        "the CUDA row pass adds the gains' gradients per row");
  AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_cuda_ln_rows_backward", [&] {
    ln_rows_backward_kernel<scalar_t><<<static_cast<unsigned>(args.rows), row_threads(args.hidden), 0,
                                        at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace lstm_ext
