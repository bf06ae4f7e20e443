#include "lstm_ops.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/DeviceGuard.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <functional>
#include <numeric>
#include <optional>
#include <vector>
#include <algorithm>
#include <string>

#include "buffer_pool.h"
#include "lstm_checks.h"
#include "lstm_kernels.h"
#include "packed_rows.h"

namespace lstm_ext {

// An uninitialised tensor; on the CPU, from 1 MiB up, its memory comes from
// the buffer pool (buffer_pool.cpp: reused blocks instead of fresh mmaps
// whose page faults cost more than filling them). Its storage stays
// resizable, through the CPU allocator.
Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  constexpr int64_t kPooledMinBytes = int64_t(1) << 20;
  const int64_t bytes = c10::multiply_integers(sizes) * static_cast<int64_t>(options.dtype().itemsize());
  if (!options.device().is_cpu() || bytes < kPooledMinBytes) {
    return at::empty(sizes, options);
  }
  // The block is owned by its tensor's storage and goes back to the pool
  // when the storage is freed.
  using Block = PooledArray<std::byte>;
  auto* block = new Block(static_cast<size_t>(bytes));
  return at::for_blob(block->data(), sizes)
      .context(block, [](void* context) { delete static_cast<Block*>(context); })
      .options(options)
      .resizeable_storage()
      .allocator(c10::GetCPUAllocator())
      .make_tensor();
}

namespace {

std::atomic<bool> cpu_specialized_enabled{true};

// Every tensor argument: floating point, the weight's dtype, the weight's device.
void check_like_weight(const char* op, const char* name, const Tensor& t, const Tensor& weight) {
  check_like(op, name, t, "weight", weight);
}

void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef expected,
                 const char* meaning) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": ", name, " must have shape ", expected, " ",
                    meaning, ", got ", t.sizes());
}

// An operand beside the weight: its dtype and device, then its shape.
void check_operand(const char* op, const char* name, const Tensor& t, const Tensor& weight, at::IntArrayRef expected,
                   const char* meaning) {
  check_like_weight(op, name, t, weight);
  check_shape(op, name, t, expected, meaning);
}

// The cell's packed weight [4H, I+H]: returns H.
int64_t check_packed_weight(const char* op, const Tensor& weight) {
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) % 4 == 0 && weight.size(1) >= weight.size(0) / 4,
                    op, ": weight must have shape [4*hidden_size, input_size + hidden_size], got ",
                    weight.sizes());
  return weight.size(0) / 4;
}

// The LSTM with projections' weights: weight_hr [P, H] and weight_hh [4H, P];
// without weight_hr, check_recurrent_weight's. Returns (H, P), P = 0
// without projections.
std::pair<int64_t, int64_t> check_recurrent_weights(const char* op, const Tensor& weight_hh,
                                                    const std::optional<Tensor>& weight_hr, int64_t gates) {
  if (!weight_hr.has_value()) return {check_recurrent_weight(op, weight_hh, gates), 0};
  TORCH_CHECK_VALUE(gates == 4, op, ": weight_hr (projections) is for the LSTM only");
  const Tensor& w_hr = *weight_hr;
  TORCH_CHECK_VALUE(w_hr.dim() == 2 && w_hr.size(0) > 0 && w_hr.size(1) > 0, op,
                    ": weight_hr must have shape [proj_size, hidden_size], got ", w_hr.sizes());
  const int64_t P = w_hr.size(0), H = w_hr.size(1);
  check_like(op, "weight_hr", w_hr, "weight_hh", weight_hh);
  TORCH_CHECK_VALUE(weight_hh.sizes() == at::IntArrayRef({4 * H, P}), op,
                    ": with weight_hr of shape [proj_size, hidden_size] = ", w_hr.sizes(),
                    ", weight_hh must have shape [4*hidden_size, proj_size] = [", 4 * H, ", ", P, "], got ",
                    weight_hh.sizes());
  return {H, P};
}

// Below cpu::kSmallProductFmas multiply-adds a CPU product runs in
// cpu::small_gemm on the calling thread instead of ATen's mm, whose BLAS call
// alone costs more.
using cpu::kSmallProductFmas;
// cpu::packed_gemm packs all of b for every call, which pays off over
// enough rows of a: from 64 (a cell's B rows at B=16, I=H=1024 ran 5x
// slower packed). At 1024 rows, as this was, sequences of T*B < 1024 rows
// and cells of B < 1024 went to MKL's sgemm, which on an AMD EPYC (Zen 5,
// 2 threads, forward+backward, torch's time / ours) left lstm_ext.LSTM at
// 0.69-0.95x torch.nn.LSTM at T=100, B=1-10, H=128-256, and LSTMCell at
// 0.83-0.98x torch's at B=64-512, H=256-1024; packed from 64 rows:
// 0.94-1.38x (B=1, H=256: 0.76 either way) and 0.96-1.45x.
constexpr int64_t kPackedMinRows = 64;
// small_gemm takes a transposed b of more than kSmallTransposedMaxCopy
// elements only over kSmallTransposedMinRows rows of a or more: below, its
// copy of b costs more than the BLAS call it saves.
constexpr int64_t kSmallTransposedMinRows = 64, kSmallTransposedMaxCopy = 2048;

// Whether out = a @ b takes cpu::row_dots: few rows of a (a T = 1 layer's or
// a cell's forward) against a weight's transposed view, float or double, on
// the CPU's specialized kernels. Its result does not depend on the thread
// count (MKL's sgemm's does at 5-7 and 9-11 rows), and it reads the weight
// as it is.
bool takes_row_dots(const Tensor& a, const Tensor& b, const Tensor& out) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const bool a_rows = a.stride(1) == 1 && a.stride(0) >= K;
  const bool weight_t = b.stride(0) == 1 && (N == 1 || b.stride(1) >= K);
  return cpu_specialized(a) && a_rows && weight_t && M <= cpu::kRowDotsMaxRows && out.stride(1) == 1 &&
         (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble);
}

// out [+]= [bias + bias2 +] a @ b by cpu::row_dots (takes_row_dots).
void row_dots_product(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& bias2, const Tensor& out,
                      bool accumulate) {
  const Tensor bias_mem = bias.defined() ? bias.contiguous() : bias;
  const Tensor bias2_mem = bias2.defined() ? bias2.contiguous() : bias2;
  cpu::RowDotsArgs args{a.scalar_type(), a.size(0), b.size(1), a.size(1), a.const_data_ptr(), a.stride(0),
                        b.const_data_ptr(), b.stride(1), bias_mem.defined() ? bias_mem.const_data_ptr() : nullptr,
                        bias2_mem.defined() ? bias2_mem.const_data_ptr() : nullptr, out.data_ptr(), out.stride(0)};
  args.accumulate = accumulate;
  cpu::row_dots(args);
}

// out (+)= a @ b for a weight's transposed view b: a step's recurrent
// product in the generic loop (on the CPU, a T = 1 call's).
void step_product(Tensor out, const Tensor& a, const Tensor& b, bool accumulate) {
  if (takes_row_dots(a, b, out)) {
    row_dots_product(a, b, Tensor(), Tensor(), out, accumulate);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

// [bias + bias2 +] a @ b for a [M, K] and b [K, N], into out when given (else
// a new tensor). On the CPU, float products with many rows of a row-major a
// take cpu::packed_gemm, small ones cpu::small_gemm (a transposed view of a
// row-major matrix is read as it is); the rest go to ATen. bias2 (a layer's
// second bias) only with bias.
Tensor product(const Tensor& a, const Tensor& b, const Tensor& bias = Tensor(), Tensor out = Tensor(),
               const Tensor& bias2 = Tensor()) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (!out.defined()) out = at::empty({M, N}, a.options());
  const bool a_rows = a.stride(1) == 1 && a.stride(0) >= K;
  const bool empty = M == 0 || N == 0 || K == 0;
  if (!empty && takes_row_dots(a, b, out)) {
    row_dots_product(a, b, bias, bias2, out, /*accumulate=*/false);
    return out;
  }
  // small_gemm copies a transposed b (a weight's .t()) row-major, K * N
  // strided reads whatever M is: over few rows of a that copy is the cost (a
  // T = 1 layer's input projection at B=1, I=256, 4H=1024: ~0.3 ms), and the
  // BLAS reads the view as it is.
  const bool copies_b = b.stride(1) != 1 && K * N > kSmallTransposedMaxCopy;
  // Few rows of a against a row-major float b (the backward's products with
  // a weight at small batches) go to small_gemm at any size: its result does
  // not depend on the thread count, the BLAS's does at 5-7 and 9-11 rows.
  const bool few_rows = M <= cpu::kRowDotsMaxRows && a.scalar_type() == at::kFloat && b.stride(1) == 1 &&
                        b.stride(0) >= N && a_rows;
  const bool small =
      !empty && (M * N * K <= kSmallProductFmas || few_rows) && (!copies_b || M >= kSmallTransposedMinRows);
  const bool packed = !empty && !small && a.scalar_type() == at::kFloat && a_rows && M >= kPackedMinRows;
  if (!cpu_specialized(a) || !(small || packed)) {
    if (!bias.defined()) return at::mm_out(out, a, b);
    return at::addmm_out(out, bias2.defined() ? bias + bias2 : bias, a, b);
  }
  const Tensor bias_mem = bias.defined() ? bias.contiguous() : bias;
  const Tensor bias2_mem = bias2.defined() ? bias2.contiguous() : bias2;
  TORCH_INTERNAL_ASSERT(out.is_contiguous());
  if (packed) {
    cpu::packed_gemm({M, N, K, a.const_data_ptr<float>(), a.stride(0), b.const_data_ptr<float>(), b.stride(0),
                      b.stride(1), bias_mem.defined() ? bias_mem.const_data_ptr<float>() : nullptr,
                      bias2_mem.defined() ? bias2_mem.const_data_ptr<float>() : nullptr,
                      out.mutable_data_ptr<float>(), N});
    return out;
  }
  const bool a_columns = !a_rows && a.stride(0) == 1 && a.stride(1) >= M;
  const Tensor a_mem = a_rows || a_columns ? a : a.contiguous();
  // b row-major, or a transposed weight, which small_gemm copies row-major.
  const bool b_rows = b.stride(1) == 1 && b.stride(0) >= N, b_columns = b.stride(0) == 1 && b.stride(1) >= K;
  const Tensor b_mem = b_rows || b_columns ? b : b.contiguous();
  cpu::small_gemm({a.scalar_type(), M, N, K, a_mem.const_data_ptr(), a_columns ? a_mem.stride(1) : a_mem.stride(0),
                   a_columns, b_mem.const_data_ptr(), b_mem.stride(0), b_mem.stride(1),
                   bias_mem.defined() ? bias_mem.const_data_ptr() : nullptr,
                   bias2_mem.defined() ? bias2_mem.const_data_ptr() : nullptr, out.data_ptr(), N});
  return out;
}

// grad_weight = grad_gates^T @ input_hidden, [4H, B] x [B, I+H], into a
// pooled buffer.
Tensor weight_grad(const Tensor& grad_gates, const Tensor& input_hidden) {
  Tensor out = pooled_empty({grad_gates.size(1), input_hidden.size(1)}, input_hidden.options());
  return product(grad_gates.t(), input_hidden, Tensor(), out);
}

// Whether a layer's weight gradients over all steps, grad_gates^T @ sequence
// with K = T*B, take cpu::long_k_gemm rather than ATen's mm: float, large,
// and with as many steps' rows as packed_gemm needs to pay off.
bool long_k_weight_grads(const Tensor& grad_gates2d, int64_t sequence_columns) {
  const int64_t K = grad_gates2d.size(0), N = grad_gates2d.size(1);
  return cpu_specialized(grad_gates2d) && grad_gates2d.scalar_type() == at::kFloat && K >= kPackedMinRows &&
         sequence_columns * N * K > kSmallProductFmas;
}

// [rows, cols] rows of a float matrix (row stride ld) into a new pooled [cols, rows] one.
Tensor transposed(const float* rows, int64_t count, int64_t cols, int64_t ld, const at::TensorOptions& options) {
  Tensor out = pooled_empty({cols, count}, options);
  cpu::transpose({count, cols, rows, ld, out.mutable_data_ptr<float>(), count});
  return out;
}

// grad_gates^T @ sequence, [4H, M], from sequence^T [M, K] and grad_gates
// [K, 4H] (K = T*B), computed as (sequence^T @ grad_gates)^T: the operand
// that is re-read for every block of columns is the short sequence^T.
Tensor long_k_weight_grad(const Tensor& grad_gates2d, const Tensor& sequence_t) {
  const int64_t M = sequence_t.size(0), K = sequence_t.size(1), N = grad_gates2d.size(1);
  Tensor product_t = pooled_empty({M, N}, sequence_t.options());
  cpu::long_k_gemm({M, N, K, sequence_t.const_data_ptr<float>(), K, grad_gates2d.const_data_ptr<float>(),
                    grad_gates2d.stride(0), product_t.mutable_data_ptr<float>(), N});
  return transposed(product_t.const_data_ptr<float>(), M, N, N, sequence_t.options());
}

}  // namespace

// The bias gradient: the column sums of grad_gates [rows, 4H]. Small ones on
// the CPU in a plain loop, where ATen's reduction costs more to set up than
// to run.
Tensor bias_grad(const Tensor& grad_gates) {
  const int64_t rows = grad_gates.size(0), cols = grad_gates.size(1);
  if (!cpu_specialized(grad_gates) || !grad_gates.is_contiguous() || rows * cols > kSmallProductFmas) {
    return grad_gates.sum(0);
  }
  Tensor grad_bias = at::empty({cols}, grad_gates.options());
  cpu::column_sums(grad_gates.scalar_type(), rows, cols, grad_gates.const_data_ptr(), grad_bias.data_ptr());
  return grad_bias;
}

// Step t of a contiguous [T, B, H] sequence as a tensor of its own (a copy:
// an operator's outputs may not alias each other). On the CPU a plain memcpy,
// not a select and a clone: at small sizes each ATen call costs as much as
// the copy.
Tensor copy_step(const Tensor& sequence, int64_t t) {
  if (!cpu_specialized(sequence)) return sequence[t].clone();
  Tensor step = at::empty({sequence.size(1), sequence.size(2)}, sequence.options());
  std::memcpy(step.data_ptr(), static_cast<const char*>(sequence.const_data_ptr()) + t * step.nbytes(), step.nbytes());
  return step;
}

// A new contiguous tensor of dtype holding t's values, and a zero-filled
// one: on the CPU a memcpy and a memset where they do (ATen's copy_ and
// fill_ set up a TensorIterator each, which costs more than the work at the
// course's size).
Tensor owned_copy(const Tensor& t, at::ScalarType dtype) {
  if (!cpu_specialized(t) || t.scalar_type() != dtype || !t.is_contiguous()) {
    return at::empty(t.sizes(), t.options().dtype(dtype)).copy_(t);
  }
  Tensor copy = pooled_empty(t.sizes(), t.options());
  if (t.numel() > 0) std::memcpy(copy.data_ptr(), t.const_data_ptr(), t.nbytes());
  return copy;
}

// t's elements set to zero in place (a memset on the CPU).
void fill_zeros(Tensor& t) {
  if (!t.is_cpu()) {
    t.zero_();
  } else if (t.numel() > 0) {
    std::memset(t.data_ptr(), 0, t.nbytes());
  }
}

Tensor zeros_of(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().type() != at::kCPU) return at::zeros(sizes, options);
  Tensor zeros = at::empty(sizes, options);
  fill_zeros(zeros);
  return zeros;
}

// The h each step started from, in time order [T, B, H]: h_0, then the
// outputs shifted by one step (the other way round when reverse).
Tensor previous_states(const Tensor& output, const Tensor& h0, bool reverse) {
  const int64_t T = output.size(0);
  if (!cpu_specialized(output)) {
    return reverse ? at::cat({output.narrow(0, 1, T - 1), h0.unsqueeze(0)}, 0)
                   : at::cat({h0.unsqueeze(0), output.narrow(0, 0, T - 1)}, 0);
  }
  const Tensor h0_c = h0.contiguous();
  const Tensor output_c = output.contiguous();
  Tensor states = pooled_empty(output.sizes(), output.options());
  const size_t step = h0_c.nbytes();
  auto* dst = static_cast<char*>(states.data_ptr());
  const auto* out = static_cast<const char*>(output_c.const_data_ptr());
  std::memcpy(reverse ? dst + (T - 1) * step : dst, h0_c.const_data_ptr(), step);
  std::memcpy(reverse ? dst : dst + step, reverse ? out + step : out, (T - 1) * step);
  return states;
}

namespace {

// previous_states transposed, [H, T*B]: column block t is the h step t
// started from; float on the CPU only (long_k_weight_grad's operand).
Tensor previous_states_transposed(const Tensor& output, const Tensor& h0, bool reverse) {
  const int64_t T = output.size(0), B = output.size(1), H = output.size(2);
  const Tensor h0_c = h0.contiguous();
  const Tensor output_c = output.contiguous();
  Tensor states = pooled_empty({H, T * B}, output.options());
  float* dst = states.mutable_data_ptr<float>();
  const float* out = output_c.const_data_ptr<float>();
  cpu::transpose({B, H, h0_c.const_data_ptr<float>(), H, reverse ? dst + (T - 1) * B : dst, T * B});
  cpu::transpose({(T - 1) * B, H, reverse ? out + B * H : out, H, reverse ? dst : dst + B, T * B});
  return states;
}

// The pointwise pass on the tensors' backend; Args picks forward or backward.
template <typename Args>
void launch(const Tensor& like, const Args& args) {
  if (like.is_cuda()) {
#ifdef LSTM_EXT_WITH_CUDA
    cuda::pointwise(args);
    return;
#else
    TORCH_CHECK(false, "lstm_ext was built without CUDA support");
#endif
  }
  cpu::pointwise(args);
}

}  // namespace

Tensor sequence_product(const Tensor& a, const Tensor& b, const Tensor& bias) {
  return product(a, b, bias, pooled_empty({a.size(0), b.size(1)}, a.options()));
}

Tensor recurrent_weight_grad(const Tensor& grad, const Tensor& output, const Tensor& h0, bool reverse) {
  const int64_t N = grad.size(0), R = output.size(-1);
  return long_k_weight_grads(grad, R) ? long_k_weight_grad(grad, previous_states_transposed(output, h0, reverse))
                                      : weight_grad(grad, previous_states(output, h0, reverse).view({N, R}));
}

Tensor sequence_weight_grad(const Tensor& grad, const Tensor& rows) {
  if (long_k_weight_grads(grad, rows.size(1))) {
    const Tensor rows_c = rows.contiguous();
    return long_k_weight_grad(grad, transposed(rows_c.const_data_ptr<float>(), rows_c.size(0), rows_c.size(1),
                                               rows_c.size(1), rows_c.options()));
  }
  return weight_grad(grad, rows);
}

bool cpu_specialized(const Tensor& t) {
  return t.is_cpu() && cpu_specialized_enabled.load(std::memory_order_relaxed);
}

bool set_cpu_specialized(bool enabled) { return cpu_specialized_enabled.exchange(enabled); }

std::tuple<Tensor, Tensor, Tensor, Tensor> cell_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& weight,
    const std::optional<Tensor>& bias) {
  constexpr const char* op = "lstm_ext.lstm_cell";
  const int64_t H = check_packed_weight(op, weight);
  check_like_weight(op, "weight", weight, weight);
  const int64_t I = weight.size(1) - H;
  TORCH_CHECK_VALUE(input.dim() == 2, op, ": input must be 2-D (batch, input_size), got a ",
                    input.dim(), "-D tensor of shape ", input.sizes());
  const int64_t B = input.size(0);
  TORCH_CHECK_VALUE(input.size(1) == I, op, ": input has ", input.size(1),
                    " features but the cell's input_size is ", I, " (input shape ", input.sizes(), ")");
  check_like_weight(op, "input", input, weight);
  check_like_weight(op, "hx (h_prev)", hx, weight);
  check_like_weight(op, "cx (c_prev)", cx, weight);
  check_shape(op, "hx (h_prev)", hx, {B, H}, "(batch, hidden_size)");
  check_shape(op, "cx (c_prev)", cx, {B, H}, "(batch, hidden_size)");
  if (bias.has_value()) {
    check_operand(op, "bias", *bias, weight, {4 * H}, "(4*hidden_size,)");
  }

  const c10::DeviceGuard guard(input.device());
  // One packed matrix product for all four gates; the bias is added in the
  // pointwise pass, which reads the gates anyway.
  Tensor input_hidden = at::cat({input, hx}, 1);
  Tensor gates = product(input_hidden, weight.t());
  const Tensor c_prev = cx.contiguous();
  const Tensor bias_cont = bias.has_value() ? bias->contiguous() : Tensor();
  Tensor h = at::empty({B, H}, input.options());
  Tensor c = at::empty({B, H}, input.options());
  if (B > 0 && H > 0) {
    void* g = gates.data_ptr();
    const PointwiseForwardArgs args{input.scalar_type(), B, H,
                                    /*preact=*/{g, 4 * H, H},
                                    /*addend=*/{bias_cont.defined() ? bias_cont.const_data_ptr() : nullptr, 0, H},
                                    /*c_prev=*/{c_prev.const_data_ptr(), H},
                                    /*gates=*/{g, 4 * H, H},
                                    /*h=*/{h.data_ptr(), H},
                                    /*c=*/{c.data_ptr(), H}};
    launch(input, args);
  }
  return {h, c, gates, input_hidden};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> cell_backward(
    const Tensor& grad_h, const Tensor& grad_c, const Tensor& cx, const Tensor& c_new,
    const Tensor& gates, const Tensor& input_hidden, const Tensor& weight) {
  constexpr const char* op = "lstm_ext.cell_backward";
  const int64_t H = check_packed_weight(op, weight);
  const int64_t I = weight.size(1) - H;
  TORCH_CHECK_VALUE(c_new.dim() == 2, op, ": c must be 2-D (batch, hidden_size), got ", c_new.sizes());
  const int64_t B = c_new.size(0);
  const std::pair<const char*, const Tensor*> state_like[] = {
      {"grad_h", &grad_h}, {"grad_c", &grad_c}, {"cx", &cx}, {"c", &c_new}};
  for (const auto& [name, t] : state_like) {
    check_operand(op, name, *t, weight, {B, H}, "(batch, hidden_size)");
  }
  check_operand(op, "gates", gates, weight, {B, 4 * H}, "(batch, 4*hidden_size)");
  check_operand(op, "input_hidden", input_hidden, weight, {B, I + H}, "(batch, input_size + hidden_size)");

  const c10::DeviceGuard guard(c_new.device());
  // Gradients may arrive as expanded or strided views (sum() gives stride 0).
  const Tensor dh = grad_h.contiguous();
  const Tensor dc = grad_c.contiguous();
  const Tensor c_prev = cx.contiguous();
  const Tensor c_cont = c_new.contiguous();
  const Tensor gates_cont = gates.contiguous();
  Tensor grad_gates = at::empty({B, 4 * H}, gates.options());
  Tensor grad_cx = at::empty({B, H}, gates.options());
  if (B > 0 && H > 0) {
    const PointwiseBackwardArgs args{gates.scalar_type(), B, H,
                                     /*gates=*/{gates_cont.const_data_ptr(), 4 * H, H},
                                     /*c_prev=*/{c_prev.const_data_ptr(), H},
                                     /*c=*/{c_cont.const_data_ptr(), H},
                                     /*grad_h=*/{dh.const_data_ptr(), H},
                                     /*grad_c=*/{dc.const_data_ptr(), H},
                                     /*grad_gates=*/{grad_gates.data_ptr(), 4 * H, H},
                                     /*grad_c_prev=*/{grad_cx.data_ptr(), H}};
    launch(gates, args);
  }
  Tensor grad_input = product(grad_gates, weight.narrow(1, 0, I));
  Tensor grad_hx = product(grad_gates, weight.narrow(1, I, H));
  Tensor grad_weight = weight_grad(grad_gates, input_hidden);
  Tensor grad_bias = bias_grad(grad_gates);
  return {grad_input, grad_hx, grad_cx, grad_weight, grad_bias};
}



namespace {

// Whether a layer runs the CPU's time loop rather than the per-step ATen
// path: on the CPU, except a single step of a hidden size of a panel or more
// (a GRUCell's call), where packing W_hh into panels costs as much as the one
// product it serves (GRUCell forward at B=16, H=1024: 0.32x torch.nn.GRUCell
// with the packing; MKL's addmm reads W_hh as it is).
bool cpu_time_loop(const Tensor& input, int64_t T, int64_t H) {
  return cpu_specialized(input) && (T > 1 || H < cpu::kRecurrencePanel);
}

// What differs between the cells at this level: the gate count, the names
// in messages, and (GRU) no c.
struct CellSpec {
  CellKind kind;
  const char* op;  // the name errors give
  int64_t gates() const { return gate_count(kind); }
  bool lstm() const { return kind == CellKind::LSTM; }
};
constexpr CellSpec kLSTM{CellKind::LSTM, "lstm_ext.LSTM"};
constexpr CellSpec kGRU{CellKind::GRU, "lstm_ext.GRU"};

// "(4*hidden_size,)" and the like, for the messages.
std::string gates_shape(int64_t gates, const char* before, const char* after) {
  return std::string(before) + std::to_string(gates) + "*hidden_size" + after;
}

// The GRU's biases where the engine takes them: b_ih, and b_hh's r and z
// parts, fold into the input projection (returned as the projection's two
// biases, [3H] each, either undefined); b_hh's n part stays apart, as the
// pointwise pass multiplies it by r (zeros without biases: the kernels read
// it unconditionally).
struct GruBiases {
  Tensor projection, projection2, hidden_n;
};
GruBiases gru_biases(const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, int64_t H,
                     const at::TensorOptions& options) {
  GruBiases out;
  Tensor hh_rz;
  if (bias_hh.has_value()) {
    hh_rz = at::cat({bias_hh->narrow(0, 0, 2 * H), at::zeros({H}, options)});
    out.hidden_n = bias_hh->narrow(0, 2 * H, H).contiguous();
  } else {
    out.hidden_n = at::zeros({H}, options);
  }
  out.projection = bias_ih.has_value() ? *bias_ih : hh_rz;
  if (bias_ih.has_value() && hh_rz.defined()) out.projection2 = hh_rz;
  return out;
}

}  // namespace

Tensor take_rows(const Tensor& first, const std::vector<int64_t>& rows, const Tensor& second) {
  const int64_t M = first.size(0);
  if (!cpu_specialized(first)) {
    const Tensor index = at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(first.device());
    return (second.defined() ? at::cat({first, second}) : first).index_select(0, index);
  }
  const Tensor a = first.contiguous(), b = second.defined() ? second.contiguous() : Tensor();
  Tensor out = pooled_empty({static_cast<int64_t>(rows.size()), first.size(1)}, first.options());
  const size_t row_bytes = static_cast<size_t>(first.size(1)) * first.element_size();
  auto* dst = static_cast<char*>(out.data_ptr());
  const auto* src_a = static_cast<const char*>(a.const_data_ptr());
  const auto* src_b = b.defined() ? static_cast<const char*>(b.const_data_ptr()) : nullptr;
  for (size_t r = 0; r < rows.size(); ++r) {
    const char* src = rows[r] < M ? src_a + rows[r] * row_bytes : src_b + (rows[r] - M) * row_bytes;
    std::memcpy(dst + r * row_bytes, src, row_bytes);
  }
  return out;
}

namespace {

// Whether a layer runs in float32 inside: bfloat16 or float16 on the CPU,
// every (defined) tensor of weight's dtype and device. The time loop's
// products and pointwise pass then run on float32 operands and keep c (and
// the saved gates and cells) in float32; the outputs and gradients are
// rounded to the 16-bit type once, as oneDNN's bf16 RNN does. A mismatch
// falls through to the checks that name it.
bool runs_in_float(const Tensor& weight, std::initializer_list<const Tensor*> tensors) {
  const auto dtype = weight.scalar_type();
  if (!weight.is_cpu() || (dtype != at::kBFloat16 && dtype != at::kHalf)) return false;
  return std::all_of(tensors.begin(), tensors.end(),
                     [&](const Tensor* t) { return !t->defined() || is_like(*t, weight); });
}

Tensor to_float(const Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }
std::optional<Tensor> to_float(const std::optional<Tensor>& t) {
  return t.has_value() ? std::optional<Tensor>(to_float(*t)) : t;
}
const Tensor& defined_or_empty(const std::optional<Tensor>& t) {
  static const Tensor empty;
  return t.has_value() ? *t : empty;
}

// A bfloat16 layer's own operands, beside the float32 copies that
// run_layer's float32 inside runs on: with bf16_products(), the input
// projection and the recurrent product take these.
struct Bf16Operands {
  Tensor input, h0, weight_ih, weight_hh, output;
};

// a @ b in float32 for bfloat16 a [M, K] and b [K, N] (any strides; a is
// read by rows), into out when given: cpu::bf16_product.
Tensor bf16_matmul(const Tensor& a, const Tensor& b, Tensor out = Tensor()) {
  const Tensor a_rows = a.stride(1) == 1 ? a : a.contiguous();
  const Tensor b_mem = b.stride(0) != 0 && b.stride(1) != 0 ? b : b.contiguous();  // zero strides: row-major
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (!out.defined()) out = pooled_empty({M, N}, a.options().dtype(at::kFloat));
  TORCH_INTERNAL_ASSERT(out.is_contiguous());
  cpu::Bf16ProductArgs args{M, N, K, a_rows.const_data_ptr<c10::BFloat16>(), a_rows.stride(0),
                            b_mem.const_data_ptr<c10::BFloat16>(), nullptr, nullptr, out.mutable_data_ptr<float>(), N};
  args.w_n_stride = b_mem.stride(1);
  args.w_k_stride = b_mem.stride(0);
  cpu::bf16_product(args);
  return out;
}

// A float32 matrix [rows, cols] rounded to bfloat16 and transposed, [cols,
// rows], in one pass of cpu::transpose's 16 x 16 blocks (ATen's copy_ of
// the transposed view takes 63 ms at 6400 x 2048 here, 17x its .to(bf16)).
Tensor bf16_transposed(const Tensor& t2d) {
  const Tensor src = t2d.stride(1) == 1 ? t2d : t2d.contiguous();
  Tensor out = pooled_empty({t2d.size(1), t2d.size(0)}, t2d.options().dtype(at::kBFloat16));
  cpu::TransposeArgs args{src.size(0), src.size(1), src.const_data_ptr<float>(), src.stride(0), nullptr, src.size(0)};
  args.dst_bf16 = out.mutable_data_ptr<c10::BFloat16>();
  cpu::transpose(args);
  return out;
}

// A layer's sizes, once its operands have passed the checks of
// check_layer: H hidden units, P projections (0: none), G = gates * H, R the
// width of h, I the input's, B the batch's.
struct LayerDims {
  int64_t H, P, G, R, I, B;
};

// The checks of a layer's operands (shapes, dtypes, devices), in any one
// dtype: errors name the tensor and what was expected.
LayerDims check_layer(const CellSpec& cell, const Tensor& input, const Tensor& h0, const Tensor& c0,
                      const Tensor& weight_ih, const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                      const std::optional<Tensor>& bias_hh, const std::optional<Tensor>& weight_hr, bool packed) {
  const char* op = cell.op;
  const int64_t gates_per_unit = cell.gates();
  const auto [H, P] = check_recurrent_weights(op, weight_hh, weight_hr, gates_per_unit);
  const int64_t G = gates_per_unit * H, R = P > 0 ? P : H;
  check_like_weight(op, "weight_hh", weight_hh, weight_hh);
  const auto [I, B] = check_layer_input(op, input, weight_ih, h0, gates_per_unit, H, packed);
  const Tensor& weight = weight_hh;  // the reference for dtype and device checks
  check_like_weight(op, "input", input, weight);
  check_like_weight(op, "weight_ih", weight_ih, weight);
  check_like_weight(op, "h_0", h0, weight);
  if (cell.lstm()) check_like_weight(op, "c_0", c0, weight);
  check_shape(op, "h_0", h0, {B, R}, P > 0 ? "(batch, proj_size)" : "(batch, hidden_size)");
  if (cell.lstm()) check_shape(op, "c_0", c0, {B, H}, "(batch, hidden_size)");
  const std::string bias_meaning = gates_shape(gates_per_unit, "(", ",)");
  for (const auto& [name, bias] : {std::pair{"bias_ih", &bias_ih}, std::pair{"bias_hh", &bias_hh}}) {
    if (bias->has_value()) {
      check_operand(op, name, **bias, weight, {G}, bias_meaning.c_str());
    }
  }
  return {H, P, G, R, I, B};
}

// Whether a bfloat16 layer call is one step that skips the time loop (T = 1,
// H of a panel or more; see cpu_time_loop) and can take bf16_one_step.
bool bf16_one_step_applies(const Tensor& input, const Tensor& weight_hh, const std::optional<Tensor>& weight_hr,
                           const std::optional<Tensor>& batch_sizes) {
  return input.scalar_type() == at::kBFloat16 && !weight_hr.has_value() && !batch_sizes.has_value() &&
         cpu_specialized(input) && input.dim() == 3 && input.size(0) == 1 && weight_hh.dim() == 2 &&
         !cpu_time_loop(input, 1, weight_hh.size(1)) && cpu::bf16_products();
}

// One step of a bfloat16 layer (bf16_one_step_applies, operands checked):
// its two products on the layer's own bfloat16 operands, then the pointwise
// pass in float32, as run_layer's float32 inside computes it (the same saved
// gates and cells, float32, for the backward). Converting the weights to
// float32 for float32 products, as the float32 inside does, cost more than
// the step: at B=64, H=512 the forward ran at 0.31x (LSTM) and 0.45x (GRU)
// torch.nn's bfloat16 speed. cpu::bf16_product, which packs the weights for
// long products, measured slower than ATen's here (GRU: 0.68x).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bf16_one_step(
    const CellSpec& cell, const LayerDims& d, const Tensor& input, const Tensor& h0, const Tensor& c0,
    const Tensor& weight_ih, const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool keep_cells) {
  const int64_t B = d.B, H = d.H, G = d.G;
  const auto float_options = input.options().dtype(at::kFloat);
  Tensor bias, bias2, bias_hn;
  if (cell.lstm()) {
    bias = to_float(bias_ih.has_value() ? *bias_ih : bias_hh.has_value() ? *bias_hh : Tensor());
    bias2 = bias_ih.has_value() && bias_hh.has_value() ? to_float(*bias_hh) : Tensor();
  } else {
    GruBiases biases = gru_biases(to_float(bias_ih), to_float(bias_hh), H, float_options);
    bias = std::move(biases.projection);
    bias2 = std::move(biases.projection2);
    bias_hn = std::move(biases.hidden_n);
  }
  Tensor gates = pooled_empty({1, B, G}, float_options);
  Tensor output = pooled_empty({1, B, H}, float_options);
  Tensor cells = pooled_empty({keep_cells ? 1 : (cell.lstm() ? 2 : 1), B, H}, float_options);
  if (B > 0) {
    // ATen's bfloat16 products (oneDNN's, on AVX512-BF16) round their
    // results to bfloat16, as torch.nn's bfloat16 layers do; the biases and
    // everything after in float32.
    gates.view({B, G}).copy_(at::mm(input.select(0, 0), weight_ih.t()));
    if (bias.defined()) gates.add_(bias);
    if (bias2.defined()) gates.add_(bias2);
    const Tensor recurrent = at::mm(h0, weight_hh.t()).to(at::kFloat);  // [B, G]
    auto* g = gates.data_ptr<float>();
    auto* rec = recurrent.data_ptr<float>();
    if (cell.lstm()) {
      const Tensor c_prev = to_float(c0).contiguous();
      const PointwiseForwardArgs args{at::kFloat, B, H,
                                      /*preact=*/{g, G, H},
                                      /*addend=*/{rec, G, H},
                                      /*c_prev=*/{c_prev.const_data_ptr(), H},
                                      /*gates=*/{g, G, H},
                                      /*h=*/{output.data_ptr(), H},
                                      /*c=*/{cells.data_ptr(), H}};
      cpu::pointwise(args);
    } else {
      // r and z take the recurrent product's first 2H columns; n's part
      // goes to the pointwise pass as it is (r multiplies it).
      gates.view({B, G}).narrow(1, 0, 2 * H).add_(recurrent.narrow(1, 0, 2 * H));
      const Tensor h_prev = to_float(h0).contiguous();
      const GruPointwiseForwardArgs args{at::kFloat, B, H,
                                         /*preact=*/{g, G, H},
                                         /*hidden_n_raw=*/{rec + 2 * H, G},
                                         /*bias_hn=*/bias_hn.const_data_ptr(),
                                         /*h_prev=*/{h_prev.const_data_ptr(), H},
                                         /*gates=*/{g, G, H},
                                         /*hidden_n=*/{cells.data_ptr(), H},
                                         /*h=*/{output.data_ptr(), H}};
      cpu::pointwise(args);
    }
  }
  const auto dtype = input.scalar_type();
  const Tensor output16 = output.to(dtype);
  // Outputs of an operator may not alias each other: h_n and c_n are copies.
  return {output16, output16[0].clone(), cell.lstm() ? cells[0].to(dtype) : Tensor(), gates, cells};
}

// layer_forward and layer_inference of either cell: the same checks and the
// same time loop; keep_cells says whether every step's c (LSTM) or hidden n
// (GRU) is kept for a backward (returned as cells [T, B, H]) or only what the
// loop needs (inference: [2, B, H] or [1, B, H] working memory). c0 is
// undefined for the GRU, and so is the c_n it returns. Returns (output, h_n,
// c_n, gates, cells). With batch_sizes the sequences are a PackedSequence's:
// input [N, I], output [N, R], gates and cells [N, ...] (N the sum of the
// batch sizes), each step over its own rows; h_n and c_n are each sequence's
// state at its own last step; the reverse direction reverses each sequence
// within its length and runs forward (gates and cells stay in that order).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> run_layer(
    const CellSpec& cell, const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh,
    bool reverse, bool keep_cells, const std::optional<Tensor>& weight_hr = std::nullopt,
    const std::optional<Tensor>& batch_sizes = std::nullopt, const Bf16Operands* bf16 = nullptr) {
  if (runs_in_float(weight_hh, {&input, &h0, &c0, &weight_ih, &defined_or_empty(bias_ih), &defined_or_empty(bias_hh),
                                 &defined_or_empty(weight_hr)})) {
    if (bf16_one_step_applies(input, weight_hh, weight_hr, batch_sizes)) {
      const LayerDims dims =
          check_layer(cell, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, /*packed=*/false);
      return bf16_one_step(cell, dims, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, keep_cells);
    }
    const Bf16Operands operands{input, h0, weight_ih, weight_hh};
    const bool bf16_operands = input.scalar_type() == at::kBFloat16 && !weight_hr.has_value() && cpu::bf16_products();
    // Where the time loop runs with bfloat16 products, it reads the layer's
    // own bfloat16 input and weights and never their float32 copies, so
    // those are shape-only stand-ins (a float32 zero, expanded): the copies
    // had cost ~1.5% of the forward at B=16-32, H=128-256, and most of the
    // memory that a bfloat16 inference forward added beyond torch.nn.LSTM's.
    const bool loop_reads_bf16 = bf16_operands && input.dim() == (batch_sizes.has_value() ? 2 : 3) &&
                                 weight_hh.dim() == 2 &&
                                 cpu_time_loop(input, batch_sizes.has_value() ? batch_sizes->size(0) : input.size(0),
                                               weight_hh.size(1));
    const auto operand = [&](const Tensor& t) {
      return loop_reads_bf16 ? at::zeros({}, t.options().dtype(at::kFloat)).expand(t.sizes()) : to_float(t);
    };
    auto [output, h_n, c_n, gates, cells] =
        run_layer(cell, operand(input), to_float(h0), to_float(c0), operand(weight_ih), operand(weight_hh),
                  to_float(bias_ih), to_float(bias_hh), reverse, keep_cells, to_float(weight_hr), batch_sizes,
                  bf16_operands ? &operands : nullptr);
    const auto dtype = input.scalar_type();
    return {output.to(dtype), h_n.to(dtype), c_n.defined() ? c_n.to(dtype) : c_n, gates, cells};
  }
  const char* op = cell.op;
  const int64_t gates_per_unit = cell.gates();
  const bool packed = batch_sizes.has_value();
  const LayerDims dims = check_layer(cell, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, packed);
  const int64_t H = dims.H, P = dims.P, G = dims.G, R = dims.R;  // R: the width of h
  const int64_t I = dims.I, B = dims.B;  // plain variables: the lambdas below capture B
  const Tensor& weight = weight_hh;  // the reference for dtype and device checks
  const std::optional<PackedRows> rows =
      packed ? std::optional<PackedRows>(std::in_place, op, *batch_sizes, input.size(0), B) : std::nullopt;
  const int64_t T = packed ? rows->steps() : input.size(0);
  const int64_t N = packed ? input.size(0) : T * B;
  // Each step's rows in the [N, ...] buffers; reverse runs backwards in time
  // over padded rows, forwards over reversed packed ones.
  const bool backwards = reverse && !packed;
  cpu::RecurrenceShape shape{input.scalar_type(), T, B, H, backwards, cell.kind, P};
  if (packed) shape.batch_sizes = rows->sizes.data();
  const cpu::StepLayout layout(shape);
  // The [..., X] shape of a sequence buffer: [N, X] packed, [T, B, X] padded.
  const auto sequence_shape = [&](int64_t x) {
    return packed ? std::vector<int64_t>{N, x} : std::vector<int64_t>{T, B, x};
  };

  const c10::DeviceGuard guard(input.device());
  const std::vector<int64_t> reversal = packed && reverse ? rows->reversal() : std::vector<int64_t>();
  // All time steps' input projections in one matrix product, biases folded in.
  const auto rows_of_input = [&] { return packed ? (reverse ? take_rows(input, reversal) : input) : input.reshape({N, I}); };
  Tensor w_ih = weight_ih;
  Tensor bias, bias2, bias_hn;
  if (cell.lstm()) {
    bias = bias_ih.has_value() ? *bias_ih : bias_hh.has_value() ? *bias_hh : Tensor();
    bias2 = bias_ih.has_value() && bias_hh.has_value() ? *bias_hh : Tensor();
  } else {
    GruBiases biases = gru_biases(bias_ih, bias_hh, H, weight.options());
    bias = std::move(biases.projection);
    bias2 = std::move(biases.projection2);
    bias_hn = std::move(biases.hidden_n);
  }
  // Inference on the CPU: no backward reads the gates, so the projection's
  // columns come in the time loop's panel-interleaved order, where each
  // task's four LSTM gates (the GRU's r and z) are one product (lstm_kernels.h).
  const bool time_loop = cpu_time_loop(input, T, H);
  const bool interleaved = !keep_cells && time_loop && H >= cpu::kRecurrencePanel;
  // bfloat16 products (run_layer's float32 inside on AVX512-BF16): the input
  // projection and the recurrent product on the layer's own bfloat16 operands.
  const bool bf16_products = bf16 != nullptr && time_loop;
  // float under the AVX2 and AVX512 kernels, and bfloat16 products: the input
  // projection inside the time loop, a task's block at a time
  // (RecurrenceForwardArgs::input), in training and in inference alike (so
  // the two stay bitwise equal); inference then forms no [T, B, 4H]
  // projection at all. Measured against the projection as one product before
  // the loop (AMD EPYC, AVX-512, 2 threads, forward under no_grad, torch's
  // time / ours): float32 0.92-1.00 -> 0.94-0.98 at B=16, H=128, 0.91-0.92
  // -> 0.98-0.99 at B=32, H=256, 1.01-1.03 -> 1.07-1.08 at B=64, H=512;
  // bfloat16 0.80 / 0.79 / 0.82 -> 0.82 / 0.85 / 0.92.
  // Below 3 rows a step is a matrix-vector product, and there the loop's
  // input projection reads W_ih once a step besides W_hh, where one product
  // before the loop reads it once: float32 forward under inference_mode,
  // torch's time / ours (Zen 5, T=100) went at B=1 from 1.06-1.07 / 0.82-0.92
  // / 0.69-0.70 to 1.24-1.25 / 1.02-1.05 / 1.01-1.67 at H=128 / 256 / 512,
  // at B=2 from 1.05-1.46 to 1.30-1.46 (the GRU's: B=1, H=512 1.66 -> 2.5);
  // at B=4 and 8 the loop's was faster.
  const bool fused_input =
      time_loop && (bf16_products || (B >= 3 && input.scalar_type() == at::kFloat && cpu::float_tiles()));
  const bool step_gates = fused_input && !keep_cells;  // one step's [B, G] scratch
  if (interleaved && !fused_input) {
    Tensor order = at::empty({G}, input.options().dtype(at::kLong));
    int64_t* o = order.mutable_data_ptr<int64_t>();
    for (int64_t c = 0; c < G; ++c) o[c] = cpu::recurrence_gate_order(c, H, gates_per_unit);
    w_ih = weight_ih.index_select(0, order);
    if (bias.defined()) bias = bias.index_select(0, order);
    if (bias2.defined()) bias2 = bias2.index_select(0, order);
  }
  Tensor gates = pooled_empty(step_gates ? std::vector<int64_t>{B, G} : std::vector<int64_t>{N, G}, input.options());
  // The input the loop reads (fused_input): padded rows in place when their
  // elements are contiguous (batch_first's [B, T, I] included).
  Tensor loop_input;
  if (fused_input) {
    // bfloat16 products read the layer's own bfloat16 input.
    const Tensor& source = bf16_products ? bf16->input : input;
    if (packed) {
      loop_input = (reverse ? take_rows(source, reversal) : source).contiguous();
    } else {
      loop_input = source.stride(2) != 1 ? source.contiguous() : source;
    }
  } else {
    gates = product(rows_of_input(), w_ih.t(), bias, gates, bias2);
  }
  if (!step_gates) gates = gates.view(sequence_shape(G));
  // bfloat16 products: the sequence's h is output_bf16 (below), and the
  // float h only the last two steps' (the state a GRU step's pointwise pass
  // reads), not another [T, B, H] besides the bfloat16 one.
  const bool float_h_slots = bf16_products && T > 0 && B > 0;
  Tensor output = pooled_empty(float_h_slots ? std::vector<int64_t>{2, B, R} : sequence_shape(R), input.options());
  // The LSTM's c of every step (or of the last two); the GRU's hidden n of
  // every step (or of the step running).
  const int64_t slots = cell.lstm() ? 2 : 1;
  Tensor cells = pooled_empty(keep_cells ? sequence_shape(H) : std::vector<int64_t>{slots, B, H}, input.options());
  const Tensor h0_c = h0.contiguous();
  const Tensor c0_c = cell.lstm() ? c0.contiguous() : Tensor();
  if (T == 0 || B == 0) {
    return {output, h0_c.clone(), cell.lstm() ? c0_c.clone() : Tensor(), gates, cells};
  }
  // Rows of step t of a [N, ...] buffer (flat views of the padded ones).
  const auto step_rows = [&](const Tensor& t2d, int64_t t, int64_t count) {
    return t2d.narrow(0, layout.offset[t], count);
  };
  const Tensor gates2d = gates.view({-1, G}), cells2d = cells.view({-1, H});
  const Tensor output2d = float_h_slots ? Tensor() : output.view({N, R});  // the loop without the time loop's
  // Step s's c or hidden n, its first `count` rows: every step's kept, or
  // (inference) the ones in turn.
  const auto cell_of = [&](int64_t s, int64_t t, int64_t count) {
    return keep_cells ? step_rows(cells2d, t, count) : cells[s % slots].narrow(0, 0, count);
  };
  // Projections: each step's o * tanh(c) before W_hr takes it to r_t.
  const Tensor hidden = P > 0 ? at::empty({B, H}, input.options()) : Tensor();
  const Tensor weight_hr_c = P > 0 ? weight_hr->contiguous() : Tensor();
  // The bfloat16 h of every step: what the recurrent product reads, and the output.
  const Tensor output_bf16 = bf16_products ? pooled_empty(sequence_shape(R), bf16->input.options()) : Tensor();
  const Tensor weight_hh_bf16 = bf16_products ? bf16->weight_hh.contiguous() : Tensor();
  const Tensor h0_bf16 = bf16_products ? bf16->h0.contiguous() : Tensor();
  if (time_loop) {
    // bfloat16 products read weight_hh_bf16 only (weight_hh may be a stand-in).
    const Tensor weight_hh_c = bf16_products ? Tensor() : weight_hh.contiguous();
    cpu::RecurrenceForwardArgs args{shape,
                                    bf16_products ? nullptr : weight_hh_c.const_data_ptr(),
                                    h0_c.const_data_ptr(), cell.lstm() ? c0_c.const_data_ptr() : nullptr,
                                    gates.data_ptr(), output.data_ptr(), cell.lstm() ? cells.data_ptr() : nullptr,
                                    keep_cells, interleaved};
    if (!cell.lstm()) {
      args.hidden_n = cells.data_ptr();
      args.bias_hn = bias_hn.const_data_ptr();
    }
    if (P > 0) {
      args.weight_hr = weight_hr_c.const_data_ptr();
      args.hidden = hidden.data_ptr();
    }
    const Tensor weight_ih_c = !fused_input ? Tensor() : bf16_products ? bf16->weight_ih.contiguous() : weight_ih.contiguous();
    const Tensor bias_c = fused_input && bias.defined() ? bias.contiguous() : Tensor();
    const Tensor bias2_c = fused_input && bias2.defined() ? bias2.contiguous() : Tensor();
    if (fused_input) {
      args.project_input = true;
      args.input = loop_input.const_data_ptr();
      args.input_size = I;
      args.input_row_stride = packed ? I : loop_input.stride(1);
      args.input_step_stride = packed ? 0 : loop_input.stride(0);
      args.weight_ih = weight_ih_c.const_data_ptr();
      args.bias = bias_c.defined() ? bias_c.const_data_ptr() : nullptr;
      args.bias2 = bias2_c.defined() ? bias2_c.const_data_ptr() : nullptr;
    }
    if (bf16_products) {
      args.weight_hh_bf16 = weight_hh_bf16.const_data_ptr();
      args.h0_bf16 = h0_bf16.const_data_ptr();
      args.output_bf16 = output_bf16.data_ptr();
    }
    cpu::recurrence_forward(args);
    // The output is the bfloat16 h (the float one holds the same values).
    if (bf16_products) output = output_bf16;
  } else {
    // Per step the recurrent products (cuBLAS; on the CPU, MKL at T = 1)
    // and one pointwise kernel. Off the CPU W_hh^T is copied row-major once
    // per call: for the transposed view cuBLAS picks, in float32 on an H200,
    // a kernel of 24 us at B=16, H=128 against 4.7 us on the copy, and is no
    // faster on the view at any grid size (benchmarks/cuda_step_products.py).
    // The CPU's BLAS takes the view as it is, and there the strided copy cost
    // more than the step it served (a T = 1 call at B=1, H=256: ~0.5 ms).
    const auto row_major_t = [&](const Tensor& w) { return w.is_cpu() ? w.t() : w.t().contiguous(); };
    const Tensor weight_hh_t = row_major_t(weight_hh);
    const Tensor weight_hr_t = P > 0 ? row_major_t(weight_hr_c) : Tensor();
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = backwards ? T - 1 - s : s;
      const int64_t t_prev = backwards ? t + 1 : t - 1;
      const int64_t n = layout.rows[t];  // the step's sequences: all, or (packed) those still running
      const Tensor h_prev = s == 0 ? h0_c : step_rows(output2d, t_prev, n);
      Tensor g = step_rows(gates2d, t, n);
      Tensor out_t = step_rows(output2d, t, n);
      void* gp = g.data_ptr();
      if (cell.lstm()) {
        const Tensor c_prev = s == 0 ? c0_c : cell_of(s - 1, t_prev, n);
        step_product(g, h_prev, weight_hh_t, /*accumulate=*/true);  // in place into the step's gates
        const PointwiseForwardArgs args{input.scalar_type(), n, H,
                                        /*preact=*/{gp, G, H},
                                        /*addend=*/{nullptr, 0, 0},
                                        /*c_prev=*/{c_prev.const_data_ptr(), H},
                                        /*gates=*/{gp, G, H},
                                        /*h=*/{P > 0 ? hidden.data_ptr() : out_t.data_ptr(), H},
                                        /*c=*/{cell_of(s, t, n).data_ptr(), H}};
        launch(input, args);
        if (P > 0) step_product(out_t, hidden.narrow(0, 0, n), weight_hr_t, /*accumulate=*/false);
        continue;
      }
      // GRU: r and z in place into the gates, n into the step's hidden n.
      Tensor hidden_n = cell_of(s, t, n);
      step_product(g.narrow(1, 0, 2 * H), h_prev, weight_hh_t.narrow(1, 0, 2 * H), /*accumulate=*/true);
      step_product(hidden_n, h_prev, weight_hh_t.narrow(1, 2 * H, H), /*accumulate=*/false);
      void* hp = hidden_n.data_ptr();
      const GruPointwiseForwardArgs args{input.scalar_type(), n, H,
                                         /*preact=*/{gp, G, H},
                                         /*hidden_n_raw=*/{hp, H},
                                         /*bias_hn=*/bias_hn.const_data_ptr(),
                                         /*h_prev=*/{h_prev.const_data_ptr(), H},
                                         /*gates=*/{gp, G, H},
                                         /*hidden_n=*/{hp, H},
                                         /*h=*/{out_t.data_ptr(), H}};
      launch(input, args);
    }
  }
  if (packed) {
    // Each sequence's state at its own last step; the output back in the
    // caller's order (copies: outputs may not alias).
    const std::vector<int64_t> last = rows->last_rows();
    Tensor h_n = take_rows(output.view({N, R}), last);
    Tensor c_n;
    if (cell.lstm()) {
      if (keep_cells) {
        c_n = take_rows(cells2d, last);
      } else {  // the slot of each sequence's last step
        c_n = take_rows(cells2d, rows->indices([&](int64_t t, int64_t b) { return t % 2 * B + b; }, true));
      }
    }
    if (reverse) output = take_rows(output, reversal);
    return {output, h_n, c_n, gates, cells};
  }
  // Outputs of an operator may not alias each other: h_n and c_n are copies.
  const int64_t t_last = reverse ? 0 : T - 1;
  Tensor c_n = cell.lstm() ? copy_step(cells, keep_cells ? t_last : (T - 1) % 2) : Tensor();
  return {output, copy_step(output, t_last), c_n, gates, cells};
}

// The gradients of either cell's layer (layer_backward's and
// gru_layer_backward's work). cells is the LSTM's c or the GRU's hidden n;
// c0 and grad_c_n are undefined for the GRU; an undefined grad_output,
// grad_h_n or grad_c_n (an output autograd has no gradient for) counts as
// zeros. want = (input, h0, c0,
// weights). Returns (grad_input, grad_h0, grad_c0, grad_weight_ih,
// grad_weight_hh, grad_bias_ih, grad_bias_hh); the LSTM's two bias gradients
// are one tensor. Then grad_weight_hr (projections; else undefined). With
// batch_sizes, the packed layout of run_layer (gates and cells as it saved
// them: reversed sequences for the reverse direction).
std::array<Tensor, 8> backward_layer(const CellSpec& cell, const char* op, const Tensor& grad_output,
                                     const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
                                     const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
                                     const Tensor& weight_hh, const Tensor& output, const Tensor& gates,
                                     const Tensor& cells, bool reverse, std::array<bool, 4> output_mask,
                                     const std::optional<Tensor>& weight_hr = std::nullopt,
                                     const std::optional<Tensor>& batch_sizes = std::nullopt,
                                     const Bf16Operands* bf16 = nullptr) {
  // run_layer's float32 inside: the saved gates and cells are float32.
  if (gates.scalar_type() == at::kFloat && cells.scalar_type() == at::kFloat && gates.device() == weight_hh.device() &&
      cells.device() == weight_hh.device() &&
      runs_in_float(weight_hh, {&grad_output, &grad_h_n, &grad_c_n, &input, &h0, &c0, &weight_ih, &output,
                                &defined_or_empty(weight_hr)})) {
    const Bf16Operands operands{input, h0, weight_ih, weight_hh, output};
    const bool bf16_operands = input.scalar_type() == at::kBFloat16 && !weight_hr.has_value() && cpu::bf16_products();
    // One step (bf16_one_step's backward): the weights stay bfloat16, as
    // only the products after the (one-step) loop read them.
    const bool one_step = bf16_one_step_applies(input, weight_hh, weight_hr, batch_sizes);
    auto g = backward_layer(cell, op, to_float(grad_output), to_float(grad_h_n), to_float(grad_c_n), to_float(input),
                            to_float(h0), to_float(c0), one_step ? weight_ih : to_float(weight_ih),
                            one_step ? weight_hh : to_float(weight_hh), to_float(output), gates, cells, reverse,
                            output_mask, to_float(weight_hr), batch_sizes, bf16_operands ? &operands : nullptr);
    for (Tensor& t : g) {
      if (t.defined()) t = t.to(weight_hh.scalar_type());
    }
    return g;
  }
  const int64_t gates_per_unit = cell.gates();
  const auto [H, P] = check_recurrent_weights(op, weight_hh, weight_hr, gates_per_unit);
  const int64_t G = gates_per_unit * H, R = P > 0 ? P : H;
  const bool packed = batch_sizes.has_value();
  TORCH_CHECK_VALUE(input.dim() == (packed ? 2 : 3), op, ": input must be ", packed ? "2-D (with batch_sizes)" : "3-D",
                    ", got ", input.sizes());
  const int64_t I = input.size(-1);
  const int64_t B = packed ? (h0.dim() > 0 ? h0.size(0) : 0) : input.size(1);
  const std::optional<PackedRows> rows =
      packed ? std::optional<PackedRows>(std::in_place, op, *batch_sizes, input.size(0), B) : std::nullopt;
  const int64_t T = packed ? rows->steps() : input.size(0);
  const int64_t N = packed ? input.size(0) : T * B;
  const auto sequence_shape = [&](int64_t x) {
    return packed ? std::vector<int64_t>{N, x} : std::vector<int64_t>{T, B, x};
  };
  const std::string sequence_prefix = packed ? "(rows, " : "(seq_len, batch, ";
  // A bfloat16 step's weights come as they are, the rest in float32 (the
  // float32 inside): then the rest is checked against the float32 output.
  const bool bf16_step = bf16 != nullptr && weight_hh.scalar_type() == at::kBFloat16;
  const Tensor& weight = bf16_step ? output : weight_hh;
  const char* cells_name = cell.lstm() ? "cells" : "hidden_n";
  const char* h_width = P > 0 ? "proj_size" : "hidden_size";
  const std::string sequence_meaning = sequence_prefix + h_width + ")";
  const std::string state_meaning = std::string("(batch, ") + h_width + ")";
  const std::pair<const char*, const Tensor*> sequences[] = {{"grad_output", &grad_output}, {"output", &output}};
  for (const auto& [name, t] : sequences) {
    if (t->defined()) check_operand(op, name, *t, weight, sequence_shape(R), sequence_meaning.c_str());
  }
  check_operand(op, cells_name, cells, weight, sequence_shape(H), (sequence_prefix + "hidden_size)").c_str());
  const std::pair<const char*, const Tensor*> states[] = {{"grad_h_n", &grad_h_n}, {"h_0", &h0}};
  for (const auto& [name, t] : states) {
    if (t->defined()) check_operand(op, name, *t, weight, {B, R}, state_meaning.c_str());
  }
  const std::pair<const char*, const Tensor*> cell_states[] = {{"grad_c_n", &grad_c_n}, {"c_0", &c0}};
  for (const auto& [name, t] : cell_states) {
    if (t->defined()) check_operand(op, name, *t, weight, {B, H}, "(batch, hidden_size)");
  }
  check_like_weight(op, "input", input, weight);
  check_operand(op, "weight_ih", weight_ih, weight_hh, {G, I},
                gates_shape(gates_per_unit, "(", ", input_size)").c_str());
  check_operand(op, "gates", gates, weight, sequence_shape(G),
                gates_shape(gates_per_unit, sequence_prefix.c_str(), ")").c_str());
  const bool backwards = reverse && !packed;
  cpu::RecurrenceShape shape{input.scalar_type(), T, B, H, backwards, cell.kind, P};
  if (packed) shape.batch_sizes = rows->sizes.data();
  const cpu::StepLayout layout(shape);

  const c10::DeviceGuard guard(input.device());
  // The reverse direction of packed sequences ran forwards over each
  // sequence reversed: its input, output and output gradient in that order.
  const std::vector<int64_t> reversal = packed && reverse ? rows->reversal() : std::vector<int64_t>();
  const auto run_order = [&](const Tensor& t) { return reversal.empty() ? t : take_rows(t, reversal); };
  const Tensor input_run = run_order(input), output_run = run_order(output);
  const Tensor gates_c = gates.contiguous();
  const Tensor cells_c = cells.contiguous();
  const Tensor c0_c = c0.defined() ? c0.contiguous() : c0;
  const Tensor h0_c = h0.contiguous();
  // grad_h of each step: the output's gradient plus, accumulated below, the
  // gradient flowing back from the next step.
  Tensor grad_h = pooled_empty(sequence_shape(R), output.options());
  if (grad_output.defined()) {
    grad_h.copy_(run_order(grad_output));
  } else {
    // A loss of h_n only: no [T, B, H] of zeros formed by autograd and
    // copied (~5 us of a forward+backward at the course's size).
    fill_zeros(grad_h);
  }
  // The running gradient of c, from c_n's back to c_0's (LSTM).
  Tensor grad_c;
  if (cell.lstm()) {
    grad_c = grad_c_n.defined() ? grad_c_n.clone(at::MemoryFormat::Contiguous) : zeros_of({B, H}, c0.options());
  }
  const auto [want_input, want_h0, want_c0, want_weights] = output_mask;
  const auto zeros_if = [](bool wanted, const Tensor& like) { return wanted ? at::zeros_like(like) : Tensor(); };
  if (T == 0 || B == 0) {
    const Tensor grad_h0 = T == 0 && grad_h_n.defined() ? grad_h_n.clone(at::MemoryFormat::Contiguous)
                                                        : at::zeros({B, R}, h0.options());
    const Tensor grad_bias = want_weights ? at::zeros({G}, weight_hh.options()) : Tensor();
    return {zeros_if(want_input, input), want_h0 ? grad_h0 : Tensor(), want_c0 ? grad_c : Tensor(),
            zeros_if(want_weights, weight_ih), zeros_if(want_weights, weight_hh), grad_bias,
            cell.lstm() ? grad_bias : zeros_if(want_weights, grad_bias),
            P > 0 ? zeros_if(want_weights, *weight_hr) : Tensor()};
  }
  Tensor grad_gates = pooled_empty(sequence_shape(G), gates.options());
  // GRU: the recurrent product's gradients, and the direct part of h_0's.
  Tensor grad_hidden, grad_h0_direct;
  if (!cell.lstm()) {
    grad_hidden = pooled_empty(sequence_shape(G), gates.options());
    grad_h0_direct = zeros_of({B, H}, h0.options());
  }
  const int64_t t_first = backwards ? T - 1 : 0;
  // Projections: the gradient of each step's o * tanh(c), step by step.
  Tensor grad_hidden_state = P > 0 ? at::empty({B, H}, gates.options()) : Tensor();
  const Tensor weight_hr_c = P > 0 ? weight_hr->contiguous() : Tensor();
  // Flat [N, ...] views, and the rows of step t in them.
  const Tensor grad_h2d = grad_h.view({N, R}), gates_c2d = gates_c.view({N, G}), cells_c2d = cells_c.view({N, H});
  const Tensor grad_gates2d = grad_gates.view({N, G});
  const Tensor grad_hidden2d = cell.lstm() ? Tensor() : grad_hidden.view({N, G});
  const Tensor output_run2d = output_run.reshape({N, R});
  const auto step_rows = [&](const Tensor& t2d, int64_t t, int64_t count) {
    return t2d.narrow(0, layout.offset[t], count);
  };
  const bool time_loop = cpu_time_loop(input, T, H);
  if (time_loop) {
    const Tensor weight_hh_c = weight_hh.contiguous();
    const Tensor output_c = cell.lstm() ? Tensor() : output_run.contiguous();  // the GRU's h_prev
    cpu::RecurrenceBackwardArgs args{shape,
                                     weight_hh_c.const_data_ptr(),
                                     cell.lstm() ? c0_c.const_data_ptr() : nullptr,
                                     gates_c.const_data_ptr(),
                                     cell.lstm() ? cells_c.const_data_ptr() : nullptr,
                                     grad_h.data_ptr(),
                                     grad_h_n.defined() ? grad_h_n.const_data_ptr() : nullptr,
                                     cell.lstm() ? grad_c.data_ptr() : nullptr,
                                     grad_gates.data_ptr()};
    if (grad_h_n.defined()) {  // read in place, whatever its strides
      args.grad_h_n_row_stride = grad_h_n.stride(0);
      args.grad_h_n_column_stride = grad_h_n.stride(1);
    }
    if (!cell.lstm()) {
      args.h0 = h0_c.const_data_ptr();
      args.output = output_c.const_data_ptr();
      args.hidden_n = cells_c.const_data_ptr();
      args.grad_hidden_gates = grad_hidden.data_ptr();
      args.grad_h0 = grad_h0_direct.data_ptr();
    }
    if (P > 0) {
      args.weight_hr = weight_hr_c.const_data_ptr();
      args.grad_hidden = grad_hidden_state.data_ptr();
    }
    // A bfloat16 LSTM: the gradient's recurrent product on bfloat16
    // operands, as the forward's (RecurrenceBackwardArgs::weight_hh_bf16).
    // In float32 it had been ~20% of forward+backward at B=64, H=512.
    const bool bf16_recurrent = bf16 != nullptr && cell.lstm() && P == 0;
    const Tensor weight_hh_bf16 = bf16_recurrent ? bf16->weight_hh.contiguous() : Tensor();
    const Tensor grad_gates_bf16 = bf16_recurrent ? pooled_empty({2, B, G}, bf16->weight_hh.options()) : Tensor();
    if (bf16_recurrent) {
      args.weight_hh_bf16 = weight_hh_bf16.const_data_ptr();
      args.grad_gates_bf16 = grad_gates_bf16.data_ptr();
    }
    cpu::recurrence_backward(args);
  } else {
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = backwards ? T - 1 - s : s;
      const int64_t t_prev = backwards ? t + 1 : t - 1;  // the step that ran before t
      const int64_t n = layout.rows[t];
      const int64_t n_next = s == T - 1 ? 0 : layout.rows[backwards ? t - 1 : t + 1];
      Tensor dh_t = step_rows(grad_h2d, t, n);
      // h_n's gradient joins where each sequence ends (all at the last step, padded).
      if (grad_h_n.defined() && n > n_next) dh_t.narrow(0, n_next, n - n_next).add_(grad_h_n.narrow(0, n_next, n - n_next));
      Tensor gg = step_rows(grad_gates2d, t, n);
      void* ggp = gg.data_ptr();
      if (cell.lstm()) {
        const Tensor c_prev = s == 0 ? c0_c : step_rows(cells_c2d, t_prev, n);
        void* gcp = grad_c.data_ptr();
        // Projections: grad_h holds grad_r, which W_hr takes back to o * tanh(c).
        Tensor grad_hidden_rows = P > 0 ? grad_hidden_state.narrow(0, 0, n) : Tensor();
        const Tensor dh = P > 0 ? at::mm_out(grad_hidden_rows, dh_t, weight_hr_c) : dh_t;
        const PointwiseBackwardArgs args{gates.scalar_type(), n, H,
                                         /*gates=*/{step_rows(gates_c2d, t, n).const_data_ptr(), G, H},
                                         /*c_prev=*/{c_prev.const_data_ptr(), H},
                                         /*c=*/{step_rows(cells_c2d, t, n).const_data_ptr(), H},
                                         /*grad_h=*/{dh.const_data_ptr(), H},
                                         /*grad_c=*/{gcp, H},
                                         /*grad_gates=*/{ggp, G, H},
                                         /*grad_c_prev=*/{gcp, H}};  // in place: each element read, then written
        launch(gates, args);
        if (s > 0) step_rows(grad_h2d, t_prev, n).addmm_(gg, weight_hh);  // the one recurrent product of the step
        continue;
      }
      const Tensor h_prev = s == 0 ? h0_c : step_rows(output_run2d, t_prev, n);
      Tensor grad_h_prev = s == 0 ? grad_h0_direct : step_rows(grad_h2d, t_prev, n);
      Tensor gh = step_rows(grad_hidden2d, t, n);
      const GruPointwiseBackwardArgs args{gates.scalar_type(), n, H,
                                          /*gates=*/{step_rows(gates_c2d, t, n).const_data_ptr(), G, H},
                                          /*hidden_n=*/{step_rows(cells_c2d, t, n).const_data_ptr(), H},
                                          /*h_prev=*/{h_prev.contiguous().const_data_ptr(), H},
                                          /*grad_h=*/{dh_t.const_data_ptr(), H},
                                          /*grad_input_gates=*/{ggp, G, H},
                                          /*grad_hidden_gates=*/{gh.data_ptr(), G, H},
                                          /*grad_h_prev=*/{grad_h_prev.data_ptr(), H}};
      launch(gates, args);
      if (s > 0) grad_h_prev.addmm_(gh, weight_hh);
    }
  }
  // Everything that does not recur, over all steps at once; only what the
  // caller needs (a first layer's input is data; frozen weights need nothing).
  const Tensor& gates2d = grad_gates2d;
  const Tensor recurrent2d = cell.lstm() ? gates2d : grad_hidden2d;
  Tensor grad_h0, grad_input, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, grad_weight_hr;
  if (bf16_step) {
    // One bfloat16 step: ATen's bfloat16 products, as its forward's, on
    // the gates' gradients rounded to bfloat16 and the layer's own operands.
    TORCH_INTERNAL_ASSERT(T == 1 && !packed && P == 0);
    const Tensor gates16 = grad_gates2d.to(at::kBFloat16);
    const Tensor recurrent16 = cell.lstm() ? gates16 : grad_hidden2d.to(at::kBFloat16);
    if (want_h0) {
      grad_h0 = at::mm(recurrent16, weight_hh);
      if (!cell.lstm()) grad_h0 = grad_h0.to(at::kFloat).add_(grad_h0_direct);
    }
    if (want_input) grad_input = at::mm(gates16, weight_ih).view({1, B, I});
    if (want_weights) {
      grad_weight_ih = at::mm(gates16.t(), bf16->input.select(0, 0));
      grad_weight_hh = at::mm(recurrent16.t(), bf16->h0);
      grad_bias_ih = bias_grad(grad_gates2d);
      grad_bias_hh = cell.lstm() ? grad_bias_ih : bias_grad(grad_hidden2d);
    }
    return {grad_input, grad_h0, want_c0 ? grad_c : Tensor(), grad_weight_ih, grad_weight_hh, grad_bias_ih,
            grad_bias_hh, grad_weight_hr};
  }
  if (want_h0) {
    grad_h0 = product(step_rows(recurrent2d, t_first, B), weight_hh);
    if (!cell.lstm()) grad_h0.add_(grad_h0_direct);
  }
  // A bfloat16 layer (run_layer's float32 inside on AVX512-BF16): these
  // products on the gradients of the gates rounded to bfloat16 and the
  // layer's own bfloat16 input, weights and outputs, as the forward's.
  const bool bf16_products = bf16 != nullptr && time_loop;
  if (want_input) {
    grad_input = bf16_products
                     ? bf16_matmul(gates2d.to(at::kBFloat16), bf16->weight_ih, pooled_empty({N, I}, input.options()))
                     : product(gates2d, weight_ih, Tensor(), pooled_empty({N, I}, input.options()));
    grad_input = packed ? run_order(grad_input) : grad_input.view({T, B, I});
  }
  if (want_weights) {
    // Packed: the row of the h each row's step started from, in [h_0;
    // outputs]: h_0's for the first step, else the same sequence's output
    // one step earlier (row offset[t - 1] + b).
    const std::vector<int64_t> previous_rows =
        packed ? rows->indices([&](int64_t t, int64_t b) { return t == 0 ? b : B + layout.offset[t - 1] + b; })
               : std::vector<int64_t>();
    if (bf16_products) {
      const Tensor grad_gates16_t = bf16_transposed(gates2d);
      const Tensor input16 = (packed ? run_order(bf16->input) : bf16->input).reshape({N, I});
      grad_weight_ih = bf16_matmul(grad_gates16_t, input16);
      const Tensor previous16 = packed ? take_rows(bf16->h0.contiguous(), previous_rows,
                                                   run_order(bf16->output).reshape({N, R}))
                                       : previous_states(bf16->output, bf16->h0, reverse).view({N, R});
      grad_weight_hh = bf16_matmul(cell.lstm() ? grad_gates16_t : bf16_transposed(recurrent2d), previous16);
    } else {
      if (long_k_weight_grads(gates2d, I)) {
        const Tensor input_c = input_run.contiguous();
        grad_weight_ih =
            long_k_weight_grad(gates2d, transposed(input_c.const_data_ptr<float>(), N, I, I, input.options()));
      } else {
        grad_weight_ih = weight_grad(gates2d, input_run.reshape({N, I}));
      }
      if (packed) {
        const Tensor previous = take_rows(h0_c, previous_rows, output_run2d);
        grad_weight_hh = long_k_weight_grads(recurrent2d, R)
                             ? long_k_weight_grad(recurrent2d, transposed(previous.const_data_ptr<float>(), N, R, R,
                                                                          input.options()))
                             : weight_grad(recurrent2d, previous);
      } else {
        grad_weight_hh = recurrent_weight_grad(recurrent2d, output, h0, reverse);
      }
    }
    grad_bias_ih = bias_grad(gates2d);
    grad_bias_hh = cell.lstm() ? grad_bias_ih : bias_grad(recurrent2d);
    if (P > 0) {
      // grad_r^T @ (o * tanh(c)) over all steps, [P, H]; o * tanh(c) is
      // formed again from the saved gates and cells rather than kept by the
      // forward (one pass over [T, B, H] against a tensor more to save).
      const Tensor hidden_states = gates_c2d.narrow(1, 3 * H, H) * at::tanh(cells_c2d);
      grad_weight_hr = weight_grad(grad_h2d, hidden_states);
    }
  }
  return {grad_input, grad_h0, want_c0 ? grad_c : Tensor(), grad_weight_ih, grad_weight_hh, grad_bias_ih,
          grad_bias_hh, grad_weight_hr};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_forward(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes) {
  return run_layer(kLSTM, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, /*keep_cells=*/true,
                   weight_hr, batch_sizes);
}

std::tuple<Tensor, Tensor, Tensor> layer_inference(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes) {
  auto [output, h_n, c_n, gates, cells] = run_layer(kLSTM, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                                    reverse, /*keep_cells=*/false, weight_hr, batch_sizes);
  return {output, h_n, c_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_backward(
    const std::optional<Tensor>& grad_output, const std::optional<Tensor>& grad_h_n,
    const std::optional<Tensor>& grad_c_n, const Tensor& input, const Tensor& h0, const Tensor& c0,
    const Tensor& weight_ih, const Tensor& weight_hh,
    const Tensor& output, const Tensor& gates, const Tensor& cells, bool reverse,
    std::array<bool, 4> output_mask, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes) {
  // Undefined when absent, as autograd passes the gradients of unused outputs.
  const auto g = backward_layer(kLSTM, "lstm_ext.layer_backward", grad_output.value_or(Tensor()),
                                grad_h_n.value_or(Tensor()), grad_c_n.value_or(Tensor()), input, h0, c0, weight_ih,
                                weight_hh, output, gates, cells, reverse, output_mask, weight_hr, batch_sizes);
  return {g[0], g[1], g[2], g[3], g[4], g[5], g[7]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_layer_forward(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes) {
  auto [output, h_n, c_n, gates, hidden_n] = run_layer(kGRU, input, h0, Tensor(), weight_ih, weight_hh, bias_ih,
                                                       bias_hh, reverse, /*keep_cells=*/true, std::nullopt, batch_sizes);
  return {output, h_n, gates, hidden_n};
}

std::tuple<Tensor, Tensor> gru_layer_inference(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes) {
  auto [output, h_n, c_n, gates, hidden_n] = run_layer(kGRU, input, h0, Tensor(), weight_ih, weight_hh, bias_ih,
                                                       bias_hh, reverse, /*keep_cells=*/false, std::nullopt, batch_sizes);
  return {output, h_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_backward(
    const std::optional<Tensor>& grad_output, const std::optional<Tensor>& grad_h_n, const Tensor& input,
    const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& output, const Tensor& gates,
    const Tensor& hidden_n, bool reverse, std::array<bool, 3> output_mask, const std::optional<Tensor>& batch_sizes) {
  const auto g = backward_layer(kGRU, "lstm_ext.gru_layer_backward", grad_output.value_or(Tensor()),
                                grad_h_n.value_or(Tensor()), Tensor(), input, h0, Tensor(), weight_ih, weight_hh,
                                output, gates, hidden_n, reverse,
                                {output_mask[0], output_mask[1], false, output_mask[2]}, std::nullopt, batch_sizes);
  return {g[0], g[1], g[3], g[4], g[5], g[6]};
}

std::vector<int64_t> packed_reversal(const Tensor& batch_sizes) {
  const Tensor sizes = batch_sizes.contiguous();
  const int64_t* p = sizes.const_data_ptr<int64_t>();
  const int64_t rows = std::accumulate(p, p + sizes.numel(), int64_t(0));
  return PackedRows("lstm_ext", sizes, rows, sizes.numel() > 0 ? p[0] : 0).reversal();
}

}  // namespace lstm_ext
