// The LayerNorm LSTM's layer operators (and the plain LSTM's with zoneout):
// argument checks, the input part through ATen, the time loop through
// cpu::ln_recurrence_forward/backward (lstm_kernels.h).
//
// Per layer and direction: ih = x W_ih^T for all steps as one product, its
// layer norm with gain g_ih and shift b as one ATen native_layer_norm (whose
// backward serves the backward), then the time loop, which normalizes each
// step's recurrent product and c~ inside its row pass. Without layer norm
// (the LN tensors absent) the same loop is the plain LSTM, and zoneout is
// what it adds. bfloat16 and float16 run in float32 inside the operator (the
// state, the statistics, what is kept for the backward), outputs in the
// input's dtype.
#include "layernorm_lstm_ops.h"

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "lstm_checks.h"
#include "lstm_kernels.h"

namespace lstm_ext {
namespace {

constexpr const char* kOp = "lstm_ext.LayerNormLSTM";
constexpr double kEps = 1e-5;

void check_shape(const char* name, const Tensor& t, at::IntArrayRef expected, const char* meaning) {
  TORCH_CHECK_VALUE(t.sizes() == expected, kOp, ": ", name, " must have shape ", expected, " ", meaning, ", got ",
                    t.sizes());
}

void check_operand(const char* name, const Tensor& t, const Tensor& weight_hh, at::IntArrayRef expected,
                   const char* meaning) {
  check_like(kOp, name, t, "weight_hh", weight_hh);
  check_shape(name, t, expected, meaning);
}

struct LnShape {
  int64_t T, B, I, H;
  bool layer_norm;
};

// The forward's and the backward's common checks, in the fake's order
// (lstm_ext/_ops.py): returns the sizes.
LnShape check_ln_layer(const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
                       const Tensor& weight_hh, const std::optional<Tensor>& bias, const LnParams& ln,
                       const std::optional<Tensor>& mask_c, const std::optional<Tensor>& mask_h, double rate_c,
                       double rate_h) {
  check_floating(kOp, "weight_hh", weight_hh);
  TORCH_CHECK_VALUE(weight_hh.dim() == 2 && weight_hh.size(1) * 4 == weight_hh.size(0), kOp,
                    ": weight_hh must have shape [4*hidden_size, hidden_size], got ", weight_hh.sizes());
  const int64_t H = weight_hh.size(1);
  TORCH_CHECK_VALUE(input.dim() == 3, kOp, ": input must be 3-D (seq_len, batch, input_size) here, got ",
                    input.sizes());
  TORCH_CHECK_VALUE(weight_ih.dim() == 2 && weight_ih.size(0) == 4 * H, kOp,
                    ": weight_ih must have shape [4*hidden_size, input_size] = [", 4 * H, ", input_size], got ",
                    weight_ih.sizes());
  const int64_t T = input.size(0), B = input.size(1), I = weight_ih.size(1);
  TORCH_CHECK_VALUE(input.size(2) == I, kOp, ": input has ", input.size(2), " features but input_size is ", I,
                    " (input shape ", input.sizes(), ")");
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
  for (const auto& [name, mask] : {std::pair<const char*, const std::optional<Tensor>*>{"zoneout_cell_mask", &mask_c},
                                   {"zoneout_hidden_mask", &mask_h}}) {
    if (mask->has_value()) check_operand(name, **mask, weight_hh, {T, B, H}, "(seq_len, batch, hidden_size)");
  }
  TORCH_CHECK_VALUE(rate_c >= 0 && rate_c <= 1 && rate_h >= 0 && rate_h <= 1, kOp,
                    ": zoneout rates must be in [0, 1], got zoneout_cell=", rate_c, " and zoneout_hidden=", rate_h);
  TORCH_CHECK_VALUE(weight_hh.is_cpu(), kOp, ": the fused LayerNorm LSTM runs on the CPU; tensors on ",
                    weight_hh.device(), " take lstm_ext.LayerNormLSTM's composite path");
  return {T, B, I, H, present == 4};
}

// The compute type: float for the 16-bit floats, else the tensor's own.
at::ScalarType compute_type(const Tensor& like) {
  const auto s = like.scalar_type();
  return s == at::kBFloat16 || s == at::kHalf ? at::kFloat : s;
}

Tensor as_compute(const Tensor& t, at::ScalarType dtype) { return t.to(dtype).contiguous(); }

std::optional<Tensor> as_compute(const std::optional<Tensor>& t, at::ScalarType dtype) {
  if (!t.has_value()) return std::nullopt;
  return as_compute(*t, dtype);
}

const void* data_or_null(const std::optional<Tensor>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> run_ln_layer(
    const Tensor& input_, const Tensor& h0_, const Tensor& c0_, const Tensor& weight_ih_, const Tensor& weight_hh_,
    const std::optional<Tensor>& bias_, const LnParams& ln_, const std::optional<Tensor>& mask_c_,
    const std::optional<Tensor>& mask_h_, double rate_c, double rate_h, bool reverse, bool keep) {
  // The ATen calls below are the kernel's own work, not for autograd to record.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LnShape shape = check_ln_layer(input_, h0_, c0_, weight_ih_, weight_hh_, bias_, ln_, mask_c_, mask_h_,
                                       rate_c, rate_h);
  const int64_t T = shape.T, B = shape.B, I = shape.I, H = shape.H, G = 4 * H;
  const at::ScalarType dtype = compute_type(weight_hh_), out_dtype = weight_hh_.scalar_type();
  const Tensor input = as_compute(input_, dtype), h0 = as_compute(h0_, dtype), c0 = as_compute(c0_, dtype);
  const Tensor weight_ih = as_compute(weight_ih_, dtype), weight_hh = as_compute(weight_hh_, dtype);
  const std::optional<Tensor> bias = as_compute(bias_, dtype);
  const std::optional<Tensor> gamma_ih = as_compute(ln_.ih_weight, dtype), gamma_hh = as_compute(ln_.hh_weight, dtype),
                              gamma_c = as_compute(ln_.c_weight, dtype), beta_c = as_compute(ln_.c_bias, dtype);
  const std::optional<Tensor> mask_c = as_compute(mask_c_, dtype), mask_h = as_compute(mask_h_, dtype);
  const auto options = input.options();
  const Tensor x2d = input.reshape({T * B, I});

  // The input part of the pre-activations, [T * B, 4H].
  Tensor gates, ih, ih_mean, ih_rstd;
  if (shape.layer_norm) {
    ih = at::matmul(x2d, weight_ih.t());
    std::tie(gates, ih_mean, ih_rstd) =
        at::native_layer_norm(ih, {G}, gamma_ih, bias, kEps);
    gates = gates.contiguous();
  } else {
    gates = bias.has_value() ? at::addmm(*bias, x2d, weight_ih.t()) : at::matmul(x2d, weight_ih.t());
    // Distinct tensors: an operator's outputs may not alias each other.
    ih = at::empty({0}, options);
    ih_mean = at::empty({0}, options);
    ih_rstd = at::empty({0}, options);
  }
  gates = gates.reshape({T, B, G});
  Tensor output = at::empty({T, B, H}, options);
  Tensor cells = at::empty({keep ? T : 2, B, H}, options);
  Tensor hh_norm = shape.layer_norm ? at::empty({keep ? T : 1, B, G}, options) : at::empty({0}, options);
  Tensor stats = shape.layer_norm ? at::empty({keep ? T : 1, B, 3}, options) : at::empty({0}, options);
  if (T > 0 && B > 0) {
    const cpu::LnCellParams cell{shape.layer_norm, data_or_null(gamma_hh), data_or_null(gamma_c), data_or_null(beta_c),
                            data_or_null(mask_c), data_or_null(mask_h), rate_c, rate_h};
    cpu::ln_recurrence_forward({dtype, T, B, H, reverse, kEps, keep, cell, weight_hh.const_data_ptr(),
                                h0.const_data_ptr(), c0.const_data_ptr(), gates.mutable_data_ptr(),
                                shape.layer_norm ? hh_norm.mutable_data_ptr() : nullptr,
                                shape.layer_norm ? stats.mutable_data_ptr() : nullptr, output.mutable_data_ptr(),
                                cells.mutable_data_ptr()});
  }
  const int64_t last = reverse ? 0 : T - 1;
  Tensor h_n = T == 0 ? h0.clone() : output[last].clone();
  Tensor c_n = T == 0 ? c0.clone() : cells[keep ? last : (T - 1) % 2].clone();
  if (!keep) gates = cells = at::empty({0}, options);
  return {output.to(out_dtype), h_n.to(out_dtype), c_n.to(out_dtype), gates, cells,
          ih.reshape(shape.layer_norm ? at::IntArrayRef{T, B, G} : at::IntArrayRef{0}),
          ih_mean.reshape(shape.layer_norm ? at::IntArrayRef{T, B, 1} : at::IntArrayRef{0}),
          ih_rstd.reshape(shape.layer_norm ? at::IntArrayRef{T, B, 1} : at::IntArrayRef{0}), hh_norm, stats};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ln_lstm_layer_forward(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias, const std::optional<Tensor>& ln_ih_weight,
    const std::optional<Tensor>& ln_hh_weight, const std::optional<Tensor>& ln_c_weight,
    const std::optional<Tensor>& ln_c_bias, const std::optional<Tensor>& zoneout_cell_mask,
    const std::optional<Tensor>& zoneout_hidden_mask, double zoneout_cell, double zoneout_hidden, bool reverse) {
  return run_ln_layer(input, h0, c0, weight_ih, weight_hh, bias, {ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias},
                      zoneout_cell_mask, zoneout_hidden_mask, zoneout_cell, zoneout_hidden, reverse, /*keep=*/true);
}

std::tuple<Tensor, Tensor, Tensor> ln_lstm_layer_inference(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias, const std::optional<Tensor>& ln_ih_weight,
    const std::optional<Tensor>& ln_hh_weight, const std::optional<Tensor>& ln_c_weight,
    const std::optional<Tensor>& ln_c_bias, const std::optional<Tensor>& zoneout_cell_mask,
    const std::optional<Tensor>& zoneout_hidden_mask, double zoneout_cell, double zoneout_hidden, bool reverse) {
  auto result = run_ln_layer(input, h0, c0, weight_ih, weight_hh, bias,
                             {ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias}, zoneout_cell_mask,
                             zoneout_hidden_mask, zoneout_cell, zoneout_hidden, reverse, /*keep=*/false);
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
    const Tensor& stats) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LnParams ln_{ln_ih_weight, ln_hh_weight, ln_c_weight, ln_c_bias};
  const LnShape shape = check_ln_layer(input_, h0_, c0_, weight_ih_, weight_hh_, std::nullopt, ln_,
                                       zoneout_cell_mask, zoneout_hidden_mask, zoneout_cell, zoneout_hidden);
  const int64_t T = shape.T, B = shape.B, I = shape.I, H = shape.H, G = 4 * H;
  const at::ScalarType dtype = compute_type(weight_hh_);
  const auto options = weight_hh_.options().dtype(dtype);
  const auto check_saved = [&](const char* name, const Tensor& t, at::IntArrayRef expected) {
    TORCH_CHECK_VALUE(t.scalar_type() == dtype && t.device() == weight_hh_.device(), kOp, ": ", name,
                      " must be what the forward saved (", dtype_name(dtype), " on ", weight_hh_.device(), "), got ",
                      dtype_name(t.scalar_type()), " on ", t.device());
    check_shape(name, t, expected, "(as the forward saved it)");
  };
  check_operand("grad_output", grad_output_, weight_hh_, {T, B, H}, "(seq_len, batch, hidden_size)");
  check_operand("output", output_, weight_hh_, {T, B, H}, "(seq_len, batch, hidden_size)");
  if (grad_h_n_.has_value()) check_operand("grad_h_n", *grad_h_n_, weight_hh_, {B, H}, "(batch, hidden_size)");
  if (grad_c_n_.has_value()) check_operand("grad_c_n", *grad_c_n_, weight_hh_, {B, H}, "(batch, hidden_size)");
  check_saved("gates", gates, {T, B, G});
  check_saved("cells", cells, {T, B, H});
  const bool ln = shape.layer_norm;
  const auto lead = [&](int64_t last) { return ln ? std::vector<int64_t>{T, B, last} : std::vector<int64_t>{0}; };
  check_saved("ih", ih, lead(G));
  check_saved("ih_mean", ih_mean, lead(1));
  check_saved("ih_rstd", ih_rstd, lead(1));
  check_saved("hh_norm", hh_norm, lead(G));
  check_saved("stats", stats, lead(3));

  const Tensor input = as_compute(input_, dtype), h0 = as_compute(h0_, dtype), c0 = as_compute(c0_, dtype);
  const Tensor weight_ih = as_compute(weight_ih_, dtype), weight_hh = as_compute(weight_hh_, dtype);
  const Tensor output = as_compute(output_, dtype);
  const std::optional<Tensor> gamma_ih = as_compute(ln_.ih_weight, dtype), gamma_hh = as_compute(ln_.hh_weight, dtype),
                              gamma_c = as_compute(ln_.c_weight, dtype), beta_c = as_compute(ln_.c_bias, dtype);
  const std::optional<Tensor> mask_c = as_compute(zoneout_cell_mask, dtype),
                              mask_h = as_compute(zoneout_hidden_mask, dtype);
  // grad_h: the output's gradient, h_n's joining at the last step; consumed by the loop.
  Tensor grad_h = grad_output_.to(dtype).contiguous().clone();
  if (grad_h_n_.has_value() && T > 0) grad_h[reverse ? 0 : T - 1].add_(grad_h_n_->to(dtype));
  Tensor grad_c = grad_c_n_.has_value() ? grad_c_n_->to(dtype).contiguous().clone() : at::zeros({B, H}, options);
  Tensor grad_h0 = at::zeros({B, H}, options);
  Tensor grad_pre = at::empty({T, B, G}, options);
  Tensor grad_hh = ln ? at::empty({T, B, G}, options) : grad_pre;
  Tensor grad_gamma_hh, grad_gamma_c, grad_beta_c;
  if (ln) {
    grad_gamma_hh = at::zeros({G}, options);
    grad_gamma_c = at::zeros({H}, options);
    grad_beta_c = at::zeros({H}, options);
  }
  if (T > 0 && B > 0) {
    const cpu::LnCellParams cell{ln, data_or_null(gamma_hh), data_or_null(gamma_c), data_or_null(beta_c),
                            data_or_null(mask_c), data_or_null(mask_h), zoneout_cell, zoneout_hidden};
    cpu::ln_recurrence_backward(
        {dtype, T, B, H, reverse, cell, weight_hh.const_data_ptr(), c0.const_data_ptr(), gates.const_data_ptr(),
         ln ? hh_norm.const_data_ptr() : nullptr, ln ? stats.const_data_ptr() : nullptr, cells.const_data_ptr(),
         grad_h.mutable_data_ptr(), grad_c.mutable_data_ptr(), grad_h0.mutable_data_ptr(),
         grad_pre.mutable_data_ptr(), ln ? grad_hh.mutable_data_ptr() : nullptr,
         ln ? grad_gamma_hh.mutable_data_ptr() : nullptr, ln ? grad_gamma_c.mutable_data_ptr() : nullptr,
         ln ? grad_beta_c.mutable_data_ptr() : nullptr});
  } else if (ln) {
    grad_pre.zero_();
    grad_hh.zero_();
  } else {
    grad_pre.zero_();
  }
  // The input part: through its layer norm (ATen's backward), then the product.
  const Tensor grad_pre2d = grad_pre.reshape({T * B, G});
  Tensor grad_ih, grad_gamma_ih, grad_bias;
  if (ln) {
    // The shift's gradient is the bias's, summed below (ATen's would want the bias itself).
    std::tie(grad_ih, grad_gamma_ih, std::ignore) =
        at::native_layer_norm_backward(grad_pre2d, ih.reshape({T * B, G}), {G}, ih_mean.reshape({T * B, 1}),
                                       ih_rstd.reshape({T * B, 1}), gamma_ih, std::nullopt, {true, true, false});
  } else {
    grad_ih = grad_pre2d;
  }
  if (has_bias) grad_bias = grad_pre2d.sum(0);
  const Tensor x2d = input.reshape({T * B, I});
  Tensor grad_input = at::matmul(grad_ih, weight_ih).reshape({T, B, I});
  Tensor grad_weight_ih = at::matmul(grad_ih.t(), x2d);
  Tensor grad_weight_hh = T > 0 ? at::matmul(grad_hh.reshape({T * B, G}).t(),
                                             (reverse ? at::cat({output.narrow(0, 1, T - 1), h0.unsqueeze(0)}, 0)
                                                      : at::cat({h0.unsqueeze(0), output.narrow(0, 0, T - 1)}, 0))
                                                 .reshape({T * B, H}))
                                : at::zeros({G, H}, options);
  const auto back = [](const Tensor& t, const Tensor& like) { return t.defined() ? t.to(like.scalar_type()) : t; };
  return {back(grad_input, input_),
          back(grad_h0, h0_),
          back(grad_c, c0_),
          back(grad_weight_ih, weight_ih_),
          back(grad_weight_hh, weight_hh_),
          has_bias ? back(grad_bias.defined() ? grad_bias : at::zeros({G}, options), weight_hh_) : Tensor(),
          ln ? back(grad_gamma_ih, weight_hh_) : Tensor(),
          ln ? back(grad_gamma_hh, weight_hh_) : Tensor(),
          ln ? back(grad_gamma_c, weight_hh_) : Tensor(),
          ln ? back(grad_beta_c, weight_hh_) : Tensor()};
}

}  // namespace lstm_ext
