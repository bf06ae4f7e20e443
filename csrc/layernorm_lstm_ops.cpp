// The LayerNorm LSTM's layer operators (and the plain LSTM's with zoneout):
// argument checks, the input part through ATen, the time loop through
// cpu::ln_recurrence_forward/backward (lstm_kernels.h) on the CPU, or, on
// CUDA (and on the CPU with its specialized kernels off, which is how the
// tests run this path without a GPU), the generic loop below: per step one
// ATen product and one row pass of the backend (cuda::rows_pass: one thread
// block per row).
//
// Per layer and direction: ih = x W_ih^T for all steps as one product, its
// layer norm with gain g_ih and shift b in one pass over its rows
// (cpu::layer_norm_rows), then the time loop, which normalizes each step's
// recurrent product and c~ inside its row pass. Without layer norm
// (the LN tensors absent) the operator is the plain LSTM, and zoneout is
// what it adds: on the CPU its forward is then the LSTM's own time loop
// (cpu::recurrence_forward), its backward this operator's. bfloat16 and float16 run in float32 inside the operator (the
// state, the statistics, what is kept for the backward), outputs in the
// input's dtype. A PackedSequence (batch_sizes) runs as the LSTM's does:
// each step over its own sequences, the reverse direction over each
// sequence reversed within its length (what it keeps stays in that order).
#include "layernorm_lstm_ops.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "lstm_checks.h"
#include "lstm_kernels.h"
#include "lstm_ops.h"
#include "packed_rows.h"

namespace lstm_ext {
namespace {

constexpr const char* kOp = "lstm_ext.LayerNormLSTM";
constexpr double kEps = 1e-5;

bool fused_device(const Tensor& t) {
#ifdef LSTM_EXT_WITH_CUDA
  if (t.is_cuda()) return true;
#endif
  return t.is_cpu();
}

const char* backends_note() {
#ifdef LSTM_EXT_WITH_CUDA
  return " and CUDA";
#else
  return " (this build has no CUDA)";
#endif
}

void check_shape(const char* name, const Tensor& t, at::IntArrayRef expected, const char* meaning) {
  TORCH_CHECK_VALUE(t.sizes() == expected, kOp, ": ", name, " must have shape ", expected, " ", meaning, ", got ",
                    t.sizes());
}

void check_operand(const char* name, const Tensor& t, const Tensor& weight_hh, at::IntArrayRef expected,
                   const char* meaning) {
  check_like(kOp, name, t, "weight_hh", weight_hh);
  check_shape(name, t, expected, meaning);
}

// A layer's sizes; its sequence buffers are [lead..., ...]: (T, B), or (N,)
// rows for a PackedSequence.
struct LnShape {
  int64_t T, B, I, H;
  bool layer_norm;
  std::vector<int64_t> lead;
  std::optional<PackedRows> packed;
  int64_t rows() const { return lead.size() == 1 ? lead[0] : T * B; }
  std::vector<int64_t> of(int64_t last) const {
    std::vector<int64_t> sizes = lead;
    sizes.push_back(last);
    return sizes;
  }
};

// The forward's and the backward's common checks, in the fake's order
// (lstm_ext/_ops.py): returns the sizes.
LnShape check_ln_layer(const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
                       const Tensor& weight_hh, const std::optional<Tensor>& bias, const LnParams& ln,
                       const std::optional<Tensor>& mask_c, const std::optional<Tensor>& mask_h, double rate_c,
                       double rate_h, const std::optional<Tensor>& batch_sizes) {
  check_floating(kOp, "weight_hh", weight_hh);
  const int64_t H = check_recurrent_weight(kOp, weight_hh, 4);
  const bool is_packed = batch_sizes.has_value();
  int64_t I, B;
  std::tie(I, B) = check_layer_input(kOp, input, weight_ih, h0, 4, H, is_packed);
  check_like(kOp, "input", input, "weight_hh", weight_hh);
  check_like(kOp, "weight_ih", weight_ih, "weight_hh", weight_hh);
  check_operand("h_0", h0, weight_hh, {B, H}, "(batch, hidden_size)");
  check_operand("c_0", c0, weight_hh, {B, H}, "(batch, hidden_size)");
  if (bias.has_value()) check_operand("bias", *bias, weight_hh, {4 * H}, "(4*hidden_size,)");
  const int present = ln.ih_weight.has_value() + ln.hh_weight.has_value() + ln.c_weight.has_value() +
                      ln.c_bias.has_value();
  TORCH_CHECK_VALUE(present == 0 || present == 4, kOp,
                    ": ln_ih_weight, ln_hh_weight, ln_c_weight and ln_c_bias are given together or not at all (",
                    present, " of 4 given)");
  if (present == 4) {
    check_operand("ln_ih_weight", *ln.ih_weight, weight_hh, {4 * H}, "(4*hidden_size,)");
    check_operand("ln_hh_weight", *ln.hh_weight, weight_hh, {4 * H}, "(4*hidden_size,)");
    check_operand("ln_c_weight", *ln.c_weight, weight_hh, {H}, "(hidden_size,)");
    check_operand("ln_c_bias", *ln.c_bias, weight_hh, {H}, "(hidden_size,)");
  }
  LnShape shape{0, B, I, H, present == 4, {}, std::nullopt};
  shape.lead = is_packed ? std::vector<int64_t>{input.size(0)} : std::vector<int64_t>{input.size(0), B};
  for (const auto& [name, mask] : {std::pair<const char*, const std::optional<Tensor>*>{"zoneout_cell_mask", &mask_c},
                                   {"zoneout_hidden_mask", &mask_h}}) {
    if (mask->has_value()) {
      check_operand(name, **mask, weight_hh, shape.of(H),
                    is_packed ? "(rows, hidden_size)" : "(seq_len, batch, hidden_size)");
    }
  }
  TORCH_CHECK_VALUE(rate_c >= 0 && rate_c <= 1 && rate_h >= 0 && rate_h <= 1, kOp,
                    ": zoneout rates must be in [0, 1], got zoneout_cell=", rate_c, " and zoneout_hidden=", rate_h);
  TORCH_CHECK_VALUE(fused_device(weight_hh), kOp, ": the fused LayerNorm LSTM runs on the CPU",
                    backends_note(), "; tensors on ", weight_hh.device(),
                    " take lstm_ext.LayerNormLSTM's composite path");
  if (is_packed) {
    shape.packed.emplace(kOp, *batch_sizes, input.size(0), B);
    shape.T = shape.packed->steps();
  } else {
    shape.T = input.size(0);
  }
  return shape;
}

// The compute type: float for the 16-bit floats, else the tensor's own.
at::ScalarType compute_type(const Tensor& like) {
  const auto s = like.scalar_type();
  return s == at::kBFloat16 || s == at::kHalf ? at::kFloat : s;
}

// t in dtype; the tensor itself where it already is (what .to and
// .contiguous return then too, without their dispatcher calls: at the
// course's size those calls were a tenth of the layer's overhead).
Tensor in_dtype(const Tensor& t, at::ScalarType dtype) { return t.scalar_type() == dtype ? t : t.to(dtype); }

Tensor as_compute(const Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype && t.is_contiguous() ? t : t.to(dtype).contiguous();
}

std::optional<Tensor> as_compute(const std::optional<Tensor>& t, at::ScalarType dtype) {
  if (!t.has_value()) return std::nullopt;
  return as_compute(*t, dtype);
}

const void* data_or_null(const std::optional<Tensor>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }

// Rows per task of the input part's layer norm: ~16K elements.
int64_t layer_norm_grain(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width)); }

// The generic time loop's row passes: the backend's.
template <typename Args>
void rows_pass_on(const Tensor& like, const Args& args) {
  if (like.is_cuda()) {
#ifdef LSTM_EXT_WITH_CUDA
    cuda::rows_pass(args);
    return;
#else
    TORCH_CHECK(false, "lstm_ext was built without CUDA support");
#endif
  }
  cpu::rows_pass(args);
}

void* row_ptr(const Tensor& t, int64_t row) {
  return static_cast<char*>(t.data_ptr()) + row * t.stride(0) * t.element_size();
}

// The generic forward time loop, buffers as cpu::ln_recurrence_forward's
// (2-D: [rows, width]): per step the recurrent product through ATen (into
// hh_norm with layer norm, added into the input part without), then the row
// pass over the step's rows. Packed rows run forward (the reverse direction
// is reordered by the caller), as on the CPU.
void generic_forward(const Tensor& weight_hh, const Tensor& h0, const Tensor& c0, const Tensor& gates,
                     const Tensor& hh_norm, const Tensor& stats, const Tensor& output, const Tensor& cells, int64_t T,
                     int64_t B, bool reverse, bool keep, const cpu::LnCellParams& cell,
                     const std::optional<PackedRows>& packed) {
  const int64_t H = weight_hh.size(1);
  const cpu::StepLayout layout = packed.has_value() ? packed->layout : cpu::StepLayout(T, B, nullptr);
  const Tensor weight_t = weight_hh.t().contiguous();  // row-major: as the LSTM's generic loop (lstm_ops.cpp)
  const int64_t itemsize = gates.element_size();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s, t_prev = reverse ? t + 1 : t - 1;
    const int64_t row0 = layout.offset[t], rows_t = layout.rows[t];
    // Step s's c: its rows of cells, or block s % 2 of the two-step ring.
    const auto cells_of = [&](int64_t step, int64_t time) {
      return cells.narrow(0, keep ? layout.offset[time] : step % 2 * B, rows_t);
    };
    const Tensor h_prev = s == 0 ? h0.narrow(0, 0, rows_t) : output.narrow(0, layout.offset[t_prev], rows_t);
    const Tensor c_prev = s == 0 ? c0.narrow(0, 0, rows_t) : cells_of(s - 1, t_prev);
    const Tensor gates_t = gates.narrow(0, row0, rows_t);
    Tensor hh_t, stats_t;
    if (cell.layer_norm) {
      hh_t = hh_norm.narrow(0, keep ? row0 : 0, rows_t);
      stats_t = stats.narrow(0, keep ? row0 : 0, rows_t);
      at::mm_out(hh_t, h_prev, weight_t);
    } else {
      gates_t.addmm_(h_prev, weight_t);
    }
    rows_pass_on(weight_hh, cpu::LnRowsForwardArgs{
                                gates.scalar_type(), rows_t, H, kEps, cell.at_row(row0, H, itemsize),
                                gates_t.data_ptr(), cell.layer_norm ? hh_t.data_ptr() : nullptr, c_prev.data_ptr(),
                                h_prev.data_ptr(), cells_of(s, t).data_ptr(), row_ptr(output, row0),
                                cell.layer_norm ? stats_t.data_ptr() : nullptr});
  }
}

// The generic backward through time, buffers as cpu::ln_recurrence_backward's
// (2-D). Returns the gains' gradients (layer norm): [4H], [H], [H].
std::tuple<Tensor, Tensor, Tensor> generic_backward(
    const Tensor& weight_hh, const Tensor& c0, const Tensor& gates, const Tensor& hh_norm, const Tensor& stats,
    const Tensor& cells, const Tensor& grad_h, const Tensor& grad_c, const Tensor& grad_h0, const Tensor& grad_pre,
    const Tensor& grad_hh, int64_t T, int64_t B, bool reverse, const cpu::LnCellParams& cell,
    const std::optional<PackedRows>& packed) {
  const int64_t H = weight_hh.size(1), G = 4 * H;
  const bool layer_norm = cell.layer_norm;
  const cpu::StepLayout layout = packed.has_value() ? packed->layout : cpu::StepLayout(T, B, nullptr);
  const bool zoneout_h = cell.mask_h != nullptr || cell.rate_h != 0;
  const int64_t itemsize = gates.element_size();
  // The gains' gradients [4H | H | H]: one row per batch row on CUDA (its
  // row passes run rows in parallel), one row on the CPU; summed at the end.
  const int64_t acc_rows = weight_hh.is_cuda() ? B : 1, width = 6 * H;
  const Tensor acc = layer_norm ? at::zeros({acc_rows, width}, gates.options()) : Tensor();
  const int64_t acc_stride = weight_hh.is_cuda() ? width : 0;
  const Tensor& grad_rec = layer_norm ? grad_hh : grad_pre;  // what the recurrent product's gradient is
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = reverse ? T - 1 - s : s, t_prev = reverse ? t + 1 : t - 1;
    const int64_t row = layout.offset[t], rows_t = layout.rows[t];
    const Tensor c_prev = s == 0 ? c0.narrow(0, 0, rows_t) : cells.narrow(0, layout.offset[t_prev], rows_t);
    // h_prev's gradient: the previous step's grad_h, or grad_h0. The rows
    // past rows_t of grad_c keep their c_n's gradient until their own step.
    const Tensor grad_h_prev =
        s == 0 ? grad_h0.narrow(0, 0, rows_t) : grad_h.narrow(0, layout.offset[t_prev], rows_t);
    char* acc_base = layer_norm ? static_cast<char*>(acc.data_ptr()) : nullptr;
    cpu::LnRowsBackwardArgs args{gates.scalar_type(), rows_t, H, cell.at_row(row, H, itemsize), row_ptr(gates, row),
                                 layer_norm ? row_ptr(hh_norm, row) : nullptr,
                                 layer_norm ? row_ptr(stats, row) : nullptr, c_prev.data_ptr(), row_ptr(grad_h, row),
                                 grad_c.data_ptr(), row_ptr(grad_pre, row),
                                 layer_norm ? row_ptr(grad_hh, row) : nullptr,
                                 zoneout_h ? grad_h_prev.data_ptr() : nullptr, acc_base,
                                 layer_norm ? acc_base + G * itemsize : nullptr,
                                 layer_norm ? acc_base + (G + H) * itemsize : nullptr};
    args.gamma_row_stride = acc_stride;
    rows_pass_on(weight_hh, args);
    // The gradient reaching h_prev through this step's recurrent product.
    grad_h_prev.addmm_(grad_rec.narrow(0, row, rows_t), weight_hh);
  }
  if (!layer_norm) return {};
  const Tensor total = acc.sum(0);
  return {total.narrow(0, 0, G), total.narrow(0, G, H), total.narrow(0, G + H, H)};
}

// A packed [N, ...] buffer's rows in the order the time loop runs them (each
// sequence reversed within its length for the reverse direction; its own
// inverse), or the tensor itself.
Tensor in_run_order(const Tensor& t, const std::optional<Tensor>& reversal) {
  return reversal.has_value() ? t.index_select(0, *reversal) : t;
}

std::optional<Tensor> in_run_order(const std::optional<Tensor>& t, const std::optional<Tensor>& reversal) {
  if (!t.has_value()) return std::nullopt;
  return in_run_order(*t, reversal);
}

// The reverse direction of a PackedSequence: the reversal as an index.
std::optional<Tensor> packed_reversal_index(const LnShape& shape, bool reverse, const at::Device& device) {
  if (!shape.packed.has_value() || !reverse) return std::nullopt;
  return index_of(shape.packed->reversal(), device);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> run_ln_layer(
    const Tensor& input_, const Tensor& h0_, const Tensor& c0_, const Tensor& weight_ih_, const Tensor& weight_hh_,
    const std::optional<Tensor>& bias_, const LnParams& ln_, const std::optional<Tensor>& mask_c_,
    const std::optional<Tensor>& mask_h_, double rate_c, double rate_h, bool reverse, bool keep,
    const std::optional<Tensor>& batch_sizes, const std::optional<Tensor>& bias_hh_) {
  // The ATen calls below are the kernel's own work, not for autograd to record.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::DeviceGuard guard(weight_hh_.device());
  const LnShape shape = check_ln_layer(input_, h0_, c0_, weight_ih_, weight_hh_, bias_, ln_, mask_c_, mask_h_,
                                       rate_c, rate_h, batch_sizes);
  TORCH_CHECK_VALUE(!bias_hh_.has_value() || bias_.has_value(), kOp, ": bias_hh is given only with bias");
  if (bias_hh_.has_value()) check_operand("bias_hh", *bias_hh_, weight_hh_, {4 * shape.H}, "(4*hidden_size,)");
  const int64_t T = shape.T, B = shape.B, I = shape.I, H = shape.H, G = 4 * H, N = shape.rows();
  const bool is_packed = shape.packed.has_value();
  const std::optional<Tensor> reversal = packed_reversal_index(shape, reverse, weight_hh_.device());
  const at::ScalarType dtype = compute_type(weight_hh_), out_dtype = weight_hh_.scalar_type();
  const Tensor input = as_compute(in_run_order(input_, reversal), dtype);
  const Tensor h0 = as_compute(h0_, dtype), c0 = as_compute(c0_, dtype);
  const Tensor weight_ih = as_compute(weight_ih_, dtype), weight_hh = as_compute(weight_hh_, dtype);
  // The plain LSTM (zoneout) on the CPU runs the LSTM's fused time loop,
  // with zoneout in its pointwise pass, and for float its input projection
  // inside the loop (both biases there too); the backward is this
  // operator's, which reads the same state (the activated gates, the zoned c
  // and h). At B=16, I=H=128, T=100 (Zen 5, 2 threads) its forward took
  // 1.20x the LSTM's through this operator's own loop.
  const bool lstm_loop = !shape.layer_norm && cpu_specialized(weight_hh_) && T > 0 && B > 0;
  const bool fused_input = lstm_loop && dtype == at::kFloat && cpu::float_tiles();
  // One bias: bias_hh (the plain LSTM's second) added here, below autograd,
  // rather than by the caller, whose sum would be a graph node of its own.
  // (The LSTM's loop with its input projection takes both.)
  const std::optional<Tensor> bias = !fused_input && bias_hh_.has_value()
                                         ? as_compute(*bias_, dtype) + as_compute(*bias_hh_, dtype)
                                         : as_compute(bias_, dtype);
  const std::optional<Tensor> bias_hh = fused_input ? as_compute(bias_hh_, dtype) : std::nullopt;
  const std::optional<Tensor> gamma_ih = as_compute(ln_.ih_weight, dtype), gamma_hh = as_compute(ln_.hh_weight, dtype),
                              gamma_c = as_compute(ln_.c_weight, dtype), beta_c = as_compute(ln_.c_bias, dtype);
  const std::optional<Tensor> mask_c = as_compute(in_run_order(mask_c_, reversal), dtype),
                              mask_h = as_compute(in_run_order(mask_h_, reversal), dtype);
  const auto options = input.options();
  const Tensor x2d = input.reshape({N, I});

  // The input part of the pre-activations, [N, 4H].
  Tensor gates, ih, ih_mean, ih_rstd;
  if (shape.layer_norm) ih = sequence_product(x2d, weight_ih.t());
  if (shape.layer_norm && !cpu_specialized(weight_hh)) {
    // ATen's layer norm: gain g_ih, the bias as its shift, and the row statistics.
    std::tie(gates, ih_mean, ih_rstd) =
        at::native_layer_norm(ih, {G}, gamma_ih, bias.has_value() ? *bias : Tensor(), kEps);
    ih_mean = ih_mean.reshape({N, 1});
    ih_rstd = ih_rstd.reshape({N, 1});
  } else if (shape.layer_norm) {
    gates = pooled_empty({N, G}, options);
    ih_mean = at::empty({N, 1}, options);
    ih_rstd = at::empty({N, 1}, options);
    at::parallel_for(0, N, layer_norm_grain(G), [&](int64_t begin, int64_t end) {
      cpu::layer_norm_rows(cpu::LnInputArgs{dtype, end - begin, G, kEps,
                                            static_cast<const char*>(ih.const_data_ptr()) + begin * G * ih.element_size(),
                                            gamma_ih->const_data_ptr(), data_or_null(bias),
                                            static_cast<char*>(gates.data_ptr()) + begin * G * gates.element_size(),
                                            static_cast<char*>(ih_mean.data_ptr()) + begin * ih_mean.element_size(),
                                            static_cast<char*>(ih_rstd.data_ptr()) + begin * ih_rstd.element_size()});
    });
  } else {
    // fused_input: the loop writes every step's gates (keep) or one step's
    // at a time into a [B, 4H] scratch.
    gates = fused_input ? pooled_empty({keep ? N : B, G}, options)
                        : sequence_product(x2d, weight_ih.t(), bias.has_value() ? *bias : Tensor());
    // Distinct tensors: an operator's outputs may not alias each other.
    ih = at::empty({0}, options);
    ih_mean = at::empty({0}, options);
    ih_rstd = at::empty({0}, options);
  }
  if (keep || !fused_input) gates = gates.reshape(shape.of(G));
  Tensor output = pooled_empty(shape.of(H), options);
  Tensor cells = keep ? pooled_empty(shape.of(H), options) : at::empty({2, B, H}, options);
  Tensor hh_norm = !shape.layer_norm ? at::empty({0}, options)
                   : keep            ? pooled_empty(shape.of(G), options)
                                     : at::empty({B, G}, options);
  Tensor stats = !shape.layer_norm ? at::empty({0}, options)
                 : keep            ? at::empty(shape.of(3), options)
                                   : at::empty({B, 3}, options);
  const cpu::LnCellParams cell{shape.layer_norm, data_or_null(gamma_hh), data_or_null(gamma_c), data_or_null(beta_c),
                               data_or_null(mask_c), data_or_null(mask_h), rate_c, rate_h};
  if (lstm_loop) {
    cpu::RecurrenceShape loop_shape{dtype, T, B, H, reverse && !is_packed};
    if (is_packed) loop_shape.batch_sizes = shape.packed->sizes.data();
    cpu::RecurrenceForwardArgs args{loop_shape,         weight_hh.const_data_ptr(), h0.const_data_ptr(),
                                    c0.const_data_ptr(), gates.mutable_data_ptr(),  output.mutable_data_ptr(),
                                    cells.mutable_data_ptr(), keep};
    if (fused_input) {
      args.project_input = true;
      args.input = input.const_data_ptr();
      args.input_size = I;
      args.input_row_stride = I;
      args.input_step_stride = B * I;  // a padded [T, B, I]; packed rows go by offset
      args.weight_ih = weight_ih.const_data_ptr();
      args.bias = data_or_null(bias);
      args.bias2 = data_or_null(bias_hh);
    }
    args.zoneout = true;
    args.zoneout_mask_c = data_or_null(mask_c);
    args.zoneout_mask_h = data_or_null(mask_h);
    args.zoneout_rate_c = rate_c;
    args.zoneout_rate_h = rate_h;
    cpu::recurrence_forward(args);
  } else if (T > 0 && B > 0 && !cpu_specialized(weight_hh)) {
    const auto rows2d = [](const Tensor& t) { return t.numel() == 0 ? t : t.view({-1, t.size(-1)}); };
    generic_forward(weight_hh, h0, c0, rows2d(gates), rows2d(hh_norm), rows2d(stats), rows2d(output), rows2d(cells),
                    T, B, reverse && !is_packed, keep, cell, shape.packed);
  } else if (T > 0 && B > 0) {
    cpu::LnRecurrenceForwardArgs args{dtype, T, B, H, reverse && !is_packed, kEps, keep, cell,
                                      weight_hh.const_data_ptr(), h0.const_data_ptr(), c0.const_data_ptr(),
                                      gates.mutable_data_ptr(), shape.layer_norm ? hh_norm.mutable_data_ptr() : nullptr,
                                      shape.layer_norm ? stats.mutable_data_ptr() : nullptr, output.mutable_data_ptr(),
                                      cells.mutable_data_ptr()};
    if (is_packed) args.batch_sizes = shape.packed->sizes.data();
    cpu::ln_recurrence_forward(args);
  }
  // h_n and c_n: each sequence's state at its own last step.
  Tensor h_n, c_n;
  if (T == 0) {
    h_n = h0.clone();
    c_n = c0.clone();
  } else if (is_packed) {
    const Tensor last = index_of(shape.packed->last_rows(), output.device());
    h_n = output.index_select(0, last);
    // Without keep only the last two steps' c are there: a sequence that ends
    // at step t left its c in block t % 2 of cells, row b (steps run in order).
    std::vector<int64_t> ring_rows(static_cast<size_t>(B));  // row b of block (its last step) % 2
    for (int64_t b = 0; b < B; ++b) ring_rows[b] = (shape.packed->length(b) - 1) % 2 * B + b;
    c_n = keep ? cells.index_select(0, last)
               : cells.view({2 * B, H}).index_select(0, index_of(ring_rows, output.device()));
  } else {
    const int64_t last = reverse ? 0 : T - 1;
    h_n = copy_step(output, last);
    c_n = copy_step(cells, keep ? last : (T - 1) % 2);
  }
  output = in_run_order(output, reversal);
  if (!keep) gates = cells = at::empty({0}, options);
  const bool ln = shape.layer_norm;
  return {in_dtype(output, out_dtype), in_dtype(h_n, out_dtype), in_dtype(c_n, out_dtype), gates, cells,
          ln ? ih.reshape(shape.of(G)) : ih, ln ? ih_mean.reshape(shape.of(1)) : ih_mean,
          ln ? ih_rstd.reshape(shape.of(1)) : ih_rstd, hh_norm, stats};
}

}  // namespace

Tensor zoneout_mask(const Tensor& like, const Tensor& seed, at::IntArrayRef size, double rate) {
  TORCH_CHECK_VALUE(rate >= 0 && rate <= 1, "lstm_ext.zoneout_mask: rate must be in [0, 1], got ", rate);
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong && seed.numel() == 1 && seed.is_cpu(),
                   "lstm_ext.zoneout_mask: seed must be one int64 on the CPU, got ", seed.sizes(), " ",
                   dtype_name(seed.scalar_type()), " on ", seed.device());
  check_floating("lstm_ext.zoneout_mask", "like", like);
  return philox_zoneout_mask(like, static_cast<uint64_t>(seed.item<int64_t>()), size, rate);
}

Tensor philox_zoneout_mask(const Tensor& like, uint64_t key, at::IntArrayRef size, double rate) {
  Tensor mask = pooled_empty(size, like.options());
  // Element n is 1 where the 24 high bits of a Philox word, as a uniform in
  // [0, 1), fall below rate: Bernoulli(rate) to 2^-24 (lstm_kernels.h).
  const auto threshold = static_cast<uint32_t>(rate * 16777216.0);
  const int64_t n = mask.numel(), draws = (n + 3) / 4;  // 4 elements per draw
  at::parallel_for(0, draws, 16384, [&](int64_t begin, int64_t end) {
    cpu::philox_mask({mask.scalar_type(), mask.data_ptr(), 4 * begin, std::min(4 * end, n), key, threshold});
  });
  return mask;
}

// Zoneout's d for one layer and direction in training (c's, then h's),
// drawn as lstm_ext.reference.zoneout_masks draws them, so that
// torch.manual_seed gives the reference the same masks: on the CPU (and for
// fakes) a seed from torch's generator per mask (both seeds in one draw,
// which takes the same numbers from the generator as two), then
// zoneout_mask's Philox; elsewhere bernoulli_. None where the rate itself is
// d (eval mode) or is 0.
std::array<std::optional<Tensor>, 2> zoneout_draws(const std::array<double, 2>& rates, const Tensor& like,
                                                   at::IntArrayRef size) {
  std::array<std::optional<Tensor>, 2> masks;
  const int64_t count = (rates[0] > 0) + (rates[1] > 0);
  if (count == 0) return masks;
  const bool philox = like.is_cpu() || like.is_meta();
  // Plain CPU tensors take the kernel straight away, seeded as randint(0,
  // 2^62) seeds on the CPU: one 64-bit draw of the default generator modulo
  // the range (ATen's random_from_to for ranges from 2^32); fakes and meta
  // tensors the randint and zoneout_mask operators, whose fakes give the
  // shapes. At the course's size the operators' calls were ~5% of LSTM's
  // forward+backward.
  const bool direct = like.is_cpu() && !like.key_set().has(c10::DispatchKey::Python) &&
                      !like.key_set().has(c10::DispatchKey::Functionalize) &&
                      !c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python);
  uint64_t seeds[2] = {0, 0};
  Tensor seed_tensor;
  if (direct) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    const std::lock_guard<std::mutex> lock(generator.mutex());
    auto* cpu_generator = at::check_generator<at::CPUGeneratorImpl>(generator);
    for (int64_t k = 0; k < count; ++k) seeds[k] = cpu_generator->random64() % (uint64_t{1} << 62);
  } else if (philox) {
    seed_tensor = at::randint(0, int64_t{1} << 62, {count}, at::TensorOptions().dtype(at::kLong));
  }
  static const auto mask_op = find_op<decltype(zoneout_mask)>("lstm_ext::zoneout_mask");
  for (int k = 0, drawn = 0; k < 2; ++k) {
    if (rates[k] == 0.0) continue;
    if (!philox) {
      masks[k] = at::empty(size, like.options()).bernoulli_(rates[k]);
    } else if (direct) {
      masks[k] = philox_zoneout_mask(like, seeds[drawn], size, rates[k]);
    } else {
      masks[k] = mask_op.call(like, seed_tensor.narrow(0, drawn, 1), size, rates[k]);
    }
    ++drawn;
  }
  return masks;
}

LnLayerOutputs ln_lstm_layer_forward(LSTM_EXT_LN_LAYER_PARAMS) {
  return run_ln_layer(input, h0, c0, weight_ih, weight_hh, bias, {ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias},
                      zoneout_cell_mask, zoneout_hidden_mask, zoneout_cell, zoneout_hidden, reverse, /*keep=*/true,
                      batch_sizes, bias_hh);
}

std::tuple<Tensor, Tensor, Tensor> ln_lstm_layer_inference(LSTM_EXT_LN_LAYER_PARAMS) {
  auto result = run_ln_layer(input, h0, c0, weight_ih, weight_hh, bias,
                             {ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias}, zoneout_cell_mask,
                             zoneout_hidden_mask, zoneout_cell, zoneout_hidden, reverse, /*keep=*/false, batch_sizes,
                             bias_hh);
  return {std::get<0>(result), std::get<1>(result), std::get<2>(result)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ln_lstm_layer_backward(
    const Tensor& grad_output_, const std::optional<Tensor>& grad_h_n_, const std::optional<Tensor>& grad_c_n_,
    const Tensor& input_, const Tensor& h0_, const Tensor& c0_, const Tensor& weight_ih_, const Tensor& weight_hh_,
    bool has_bias, const std::optional<Tensor>& ln_ih_weight, const std::optional<Tensor>& ln_hh_weight,
    const std::optional<Tensor>& ln_c_weight, const std::optional<Tensor>& ln_c_bias,
    const std::optional<Tensor>& zoneout_cell_mask, const std::optional<Tensor>& zoneout_hidden_mask,
    double zoneout_cell, double zoneout_hidden, bool reverse, const Tensor& output_, const Tensor& gates,
    const Tensor& cells, const Tensor& ih, const Tensor& ih_mean, const Tensor& ih_rstd, const Tensor& hh_norm,
    const Tensor& stats, const std::optional<Tensor>& batch_sizes) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::DeviceGuard guard(weight_hh_.device());
  const LnParams ln_{ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias};
  const LnShape shape = check_ln_layer(input_, h0_, c0_, weight_ih_, weight_hh_, std::nullopt, ln_,
                                       zoneout_cell_mask, zoneout_hidden_mask, zoneout_cell, zoneout_hidden,
                                       batch_sizes);
  const int64_t T = shape.T, B = shape.B, I = shape.I, H = shape.H, G = 4 * H, N = shape.rows();
  const bool is_packed = shape.packed.has_value();
  const at::ScalarType dtype = compute_type(weight_hh_);
  const auto options = weight_hh_.options().dtype(dtype);
  const char* meaning = is_packed ? "(rows, hidden_size)" : "(seq_len, batch, hidden_size)";
  const auto check_saved = [&](const char* name, const Tensor& t, at::IntArrayRef expected) {
    TORCH_CHECK_VALUE(t.scalar_type() == dtype && t.device() == weight_hh_.device(), kOp, ": ", name,
                      " must be what the forward saved (", dtype_name(dtype), " on ", weight_hh_.device(), "), got ",
                      dtype_name(t.scalar_type()), " on ", t.device());
    check_shape(name, t, expected, "(as the forward saved it)");
  };
  check_operand("grad_output", grad_output_, weight_hh_, shape.of(H), meaning);
  check_operand("output", output_, weight_hh_, shape.of(H), meaning);
  if (grad_h_n_.has_value()) check_operand("grad_h_n", *grad_h_n_, weight_hh_, {B, H}, "(batch, hidden_size)");
  if (grad_c_n_.has_value()) check_operand("grad_c_n", *grad_c_n_, weight_hh_, {B, H}, "(batch, hidden_size)");
  check_saved("gates", gates, shape.of(G));
  check_saved("cells", cells, shape.of(H));
  const bool ln = shape.layer_norm;
  const auto saved = [&](int64_t last) { return ln ? shape.of(last) : std::vector<int64_t>{0}; };
  check_saved("ih", ih, saved(G));
  check_saved("ih_mean", ih_mean, saved(1));
  check_saved("ih_rstd", ih_rstd, saved(1));
  check_saved("hh_norm", hh_norm, saved(G));
  check_saved("stats", stats, saved(3));

  // Everything in the order the forward's loop ran (packed reverse: each
  // sequence reversed), as what it saved is.
  const std::optional<Tensor> reversal = packed_reversal_index(shape, reverse, weight_hh_.device());
  const Tensor input = as_compute(in_run_order(input_, reversal), dtype);
  const Tensor h0 = as_compute(h0_, dtype), c0 = as_compute(c0_, dtype);
  const Tensor weight_ih = as_compute(weight_ih_, dtype), weight_hh = as_compute(weight_hh_, dtype);
  const Tensor output = as_compute(in_run_order(output_, reversal), dtype);
  const std::optional<Tensor> gamma_ih = as_compute(ln_.ih_weight, dtype), gamma_hh = as_compute(ln_.hh_weight, dtype),
                              gamma_c = as_compute(ln_.c_weight, dtype), beta_c = as_compute(ln_.c_bias, dtype);
  const std::optional<Tensor> mask_c = as_compute(in_run_order(zoneout_cell_mask, reversal), dtype),
                              mask_h = as_compute(in_run_order(zoneout_hidden_mask, reversal), dtype);
  // grad_h: the output's gradient, h_n's joining at each sequence's last step; consumed by the loop.
  Tensor grad_h = owned_copy(in_run_order(grad_output_, reversal), dtype);
  if (grad_h_n_.has_value() && T > 0) {
    const Tensor grad_h_n = grad_h_n_->to(dtype);
    if (is_packed) {
      grad_h.index_add_(0, index_of(shape.packed->last_rows(), grad_h.device()), grad_h_n);
    } else {
      grad_h[reverse ? 0 : T - 1].add_(grad_h_n);
    }
  }
  Tensor grad_c = grad_c_n_.has_value() ? owned_copy(*grad_c_n_, dtype) : zeros_of({B, H}, options);
  Tensor grad_h0 = zeros_of({B, H}, options);
  Tensor grad_pre = pooled_empty(shape.of(G), options);
  Tensor grad_hh = ln ? pooled_empty(shape.of(G), options) : grad_pre;
  Tensor grad_gamma_hh, grad_gamma_c, grad_beta_c;
  if (ln) {
    grad_gamma_hh = at::zeros({G}, options);
    grad_gamma_c = at::zeros({H}, options);
    grad_beta_c = at::zeros({H}, options);
  }
  const cpu::LnCellParams cell{ln, data_or_null(gamma_hh), data_or_null(gamma_c), data_or_null(beta_c),
                               data_or_null(mask_c), data_or_null(mask_h), zoneout_cell, zoneout_hidden};
  if (T > 0 && B > 0 && !cpu_specialized(weight_hh)) {
    const auto rows2d = [](const Tensor& t) { return t.view({-1, t.size(-1)}); };
    std::tie(grad_gamma_hh, grad_gamma_c, grad_beta_c) = generic_backward(
        weight_hh, c0, gates.contiguous().view({N, G}), ln ? rows2d(hh_norm.contiguous()) : hh_norm,
        ln ? rows2d(stats.contiguous()) : stats, rows2d(cells.contiguous()), rows2d(grad_h), grad_c, grad_h0,
        rows2d(grad_pre), ln ? rows2d(grad_hh) : grad_hh, T, B, reverse && !is_packed, cell, shape.packed);
  } else if (T > 0 && B > 0) {
    cpu::LnRecurrenceBackwardArgs args{
        dtype, T, B, H, reverse && !is_packed, cell, weight_hh.const_data_ptr(), c0.const_data_ptr(),
        gates.const_data_ptr(), ln ? hh_norm.const_data_ptr() : nullptr, ln ? stats.const_data_ptr() : nullptr,
        cells.const_data_ptr(), grad_h.mutable_data_ptr(), grad_c.mutable_data_ptr(), grad_h0.mutable_data_ptr(),
        grad_pre.mutable_data_ptr(), ln ? grad_hh.mutable_data_ptr() : nullptr,
        ln ? grad_gamma_hh.mutable_data_ptr() : nullptr, ln ? grad_gamma_c.mutable_data_ptr() : nullptr,
        ln ? grad_beta_c.mutable_data_ptr() : nullptr};
    if (is_packed) args.batch_sizes = shape.packed->sizes.data();
    cpu::ln_recurrence_backward(args);
  } else {
    grad_pre.zero_();
    if (ln) grad_hh.zero_();
  }
  // The input part: through its layer norm (ATen's backward), then the product.
  const Tensor grad_pre2d = grad_pre.reshape({N, G});
  Tensor grad_ih, grad_gamma_ih, grad_bias;
  if (ln && !cpu_specialized(weight_hh)) {
    Tensor unused;
    std::tie(grad_ih, grad_gamma_ih, unused) = at::native_layer_norm_backward(
        grad_pre2d, ih.reshape({N, G}), {G}, ih_mean.reshape({N, 1}), ih_rstd.reshape({N, 1}), gamma_ih,
        Tensor(), {true, true, false});
  } else if (ln) {
    // Through the input part's layer norm; its shift's gradient is the bias's, summed below.
    const Tensor ih_c = ih.contiguous(), mean_c = ih_mean.contiguous(), rstd_c = ih_rstd.contiguous();
    grad_ih = pooled_empty({N, G}, options);
    const int64_t threads = at::get_num_threads();
    // One row per thread: grad_gamma_ih's terms, then (bias) the bias's.
    const int64_t width = has_bias ? 2 * G : G;
    Tensor partial = at::zeros({threads, width}, options);
    at::parallel_for(0, N, layer_norm_grain(G), [&](int64_t begin, int64_t end) {
      const int64_t item = grad_ih.element_size();
      char* acc = static_cast<char*>(partial.data_ptr()) + at::get_thread_num() * width * item;
      cpu::LnInputBackwardArgs args{
          dtype, end - begin, G, static_cast<const char*>(grad_pre2d.const_data_ptr()) + begin * G * item,
          static_cast<const char*>(ih_c.const_data_ptr()) + begin * G * item,
          static_cast<const char*>(mean_c.const_data_ptr()) + begin * item,
          static_cast<const char*>(rstd_c.const_data_ptr()) + begin * item, gamma_ih->const_data_ptr(),
          static_cast<char*>(grad_ih.data_ptr()) + begin * G * item, acc};
      if (has_bias) args.grad_beta = acc + G * item;
      cpu::layer_norm_rows(args);
    });
    // Two sums, not views of one: an operator's outputs may not alias.
    grad_gamma_ih = partial.narrow(1, 0, G).sum(0);
    if (has_bias) grad_bias = partial.narrow(1, G, G).sum(0);
  } else {
    grad_ih = grad_pre2d;
  }
  if (has_bias && !grad_bias.defined()) grad_bias = bias_grad(grad_pre2d.contiguous());
  Tensor grad_input = in_run_order(sequence_product(grad_ih.contiguous(), weight_ih), reversal).reshape(input_.sizes());
  Tensor grad_weight_ih = sequence_weight_grad(grad_ih.contiguous(), input.reshape({N, I}));
  // The h each row's step started from: h_0, or the sequence's output a step earlier.
  Tensor grad_weight_hh;
  if (T == 0) {
    grad_weight_hh = sequence_weight_grad(grad_hh.reshape({N, G}), at::empty({0, H}, options));
  } else if (is_packed) {
    const cpu::StepLayout& layout = shape.packed->layout;
    const std::vector<int64_t> previous_rows = shape.packed->indices(
        [&](int64_t t, int64_t b) { return t == 0 ? b : B + layout.offset[t - 1] + b; });
    grad_weight_hh = sequence_weight_grad(grad_hh.reshape({N, G}), take_rows(h0, previous_rows, output));
  } else {
    grad_weight_hh = recurrent_weight_grad(grad_hh.reshape({N, G}), output, h0, reverse);
  }
  const auto back = [](const Tensor& t, const Tensor& like) { return t.defined() ? in_dtype(t, like.scalar_type()) : t; };
  return {back(grad_input, input_),
          back(grad_h0, h0_),
          back(grad_c, c0_),
          back(grad_weight_ih, weight_ih_),
          back(grad_weight_hh, weight_hh_),
          has_bias ? back(grad_bias, weight_hh_) : Tensor(),
          ln ? back(grad_gamma_ih, weight_hh_) : Tensor(),
          ln ? back(grad_gamma_hh, weight_hh_) : Tensor(),
          ln ? back(grad_gamma_c, weight_hh_) : Tensor(),
          ln ? back(grad_beta_c, weight_hh_) : Tensor()};
}

}  // namespace lstm_ext
