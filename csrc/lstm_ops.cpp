#include "lstm_ops.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <string>

#include "lstm_kernels.h"

namespace lstm_ext {
namespace {

// "torch.float32" rather than c10's "Float": the names Python users know.
std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

bool supported_dtype(const Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kBFloat16 || s == at::kHalf;
}

// Every tensor argument: floating point, the weight's dtype, the weight's device.
void check_like_weight(const char* op, const char* name, const Tensor& t, const Tensor& weight) {
  TORCH_CHECK_TYPE(supported_dtype(t), op, ": ", name,
                   " must be a floating point tensor (float32, float64, bfloat16 or float16), got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_TYPE(t.scalar_type() == weight.scalar_type(), op, ": dtype mismatch: ", name, " is ",
                   dtype_name(t.scalar_type()), " but weight is ", dtype_name(weight.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == weight.device(), op, ": device mismatch: ", name, " is on ",
                    t.device(), " but weight is on ", weight.device());
}

void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef expected,
                 const char* meaning) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": ", name, " must have shape ", expected, " ",
                    meaning, ", got ", t.sizes());
}

// grad_weight = grad_gates^T @ input_hidden, [4H, B] x [B, I+H]. On the CPU a
// large output with a small batch falls off MKL's fast path (measured at
// B=16, I=H=1024: 27 ms in one product, 6.5 ms in blocks of 512 rows), so
// large outputs are written in row blocks. Same flops, same result.
Tensor weight_grad(const Tensor& grad_gates, const Tensor& input_hidden) {
  constexpr int64_t kLargeOutput = int64_t(1) << 22;  // elements
  constexpr int64_t kRowBlock = 512;
  const int64_t rows = grad_gates.size(1);
  if (grad_gates.is_cuda() || rows * input_hidden.size(1) < kLargeOutput) {
    return at::mm(grad_gates.t(), input_hidden);
  }
  Tensor out = at::empty({rows, input_hidden.size(1)}, input_hidden.options());
  for (int64_t r = 0; r < rows; r += kRowBlock) {
    const int64_t n = std::min(kRowBlock, rows - r);
    Tensor block = out.narrow(0, r, n);
    at::mm_out(block, grad_gates.narrow(1, r, n).t(), input_hidden);
  }
  return out;
}

template <typename Args>
void launch_forward(const Tensor& like, const Args& args) {
  if (like.is_cuda()) {
#ifdef LSTM_EXT_WITH_CUDA
    cuda::pointwise_forward(args);
    return;
#else
    TORCH_CHECK(false, "lstm_ext was built without CUDA support");
#endif
  }
  cpu::pointwise_forward(args);
}

template <typename Args>
void launch_backward(const Tensor& like, const Args& args) {
  if (like.is_cuda()) {
#ifdef LSTM_EXT_WITH_CUDA
    cuda::pointwise_backward(args);
    return;
#else
    TORCH_CHECK(false, "lstm_ext was built without CUDA support");
#endif
  }
  cpu::pointwise_backward(args);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor> cell_forward(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& weight,
    const std::optional<Tensor>& bias) {
  constexpr const char* op = "lstm_ext.lstm_cell";
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) % 4 == 0 && weight.size(1) >= weight.size(0) / 4,
                    op, ": weight must have shape [4*hidden_size, input_size + hidden_size], got ",
                    weight.sizes());
  TORCH_CHECK_TYPE(supported_dtype(weight), op,
                   ": weight must be a floating point tensor (float32, float64, bfloat16 or float16), got ",
                   dtype_name(weight.scalar_type()));
  const int64_t H = weight.size(0) / 4;
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
    check_like_weight(op, "bias", *bias, weight);
    check_shape(op, "bias", *bias, {4 * H}, "(4*hidden_size,)");
  }

  const c10::DeviceGuard guard(input.device());
  // One packed matrix product for all four gates; the bias is added in the
  // pointwise pass, which reads the gates anyway.
  Tensor input_hidden = at::cat({input, hx}, 1);
  Tensor gates = at::mm(input_hidden, weight.t());
  const Tensor c_prev = cx.contiguous();
  const Tensor bias_cont = bias.has_value() ? bias->contiguous() : Tensor();
  Tensor h = at::empty({B, H}, input.options());
  Tensor c = at::empty({B, H}, input.options());
  if (B > 0 && H > 0) {
    const PointwiseForwardArgs args{input.scalar_type(), B, H,
                                    gates.data_ptr(), 4 * H,
                                    bias_cont.defined() ? bias_cont.const_data_ptr() : nullptr, 0,
                                    c_prev.const_data_ptr(), H,
                                    h.data_ptr(), H,
                                    c.data_ptr(), H};
    launch_forward(input, args);
  }
  return {h, c, gates, input_hidden};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> cell_backward(
    const Tensor& grad_h, const Tensor& grad_c, const Tensor& cx, const Tensor& c_new,
    const Tensor& gates, const Tensor& input_hidden, const Tensor& weight) {
  constexpr const char* op = "lstm_ext.cell_backward";
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) % 4 == 0 && weight.size(1) >= weight.size(0) / 4,
                    op, ": weight must have shape [4*hidden_size, input_size + hidden_size], got ",
                    weight.sizes());
  const int64_t H = weight.size(0) / 4;
  const int64_t I = weight.size(1) - H;
  TORCH_CHECK_VALUE(c_new.dim() == 2, op, ": c must be 2-D (batch, hidden_size), got ", c_new.sizes());
  const int64_t B = c_new.size(0);
  const std::pair<const char*, const Tensor*> state_like[] = {
      {"grad_h", &grad_h}, {"grad_c", &grad_c}, {"cx", &cx}, {"c", &c_new}};
  for (const auto& [name, t] : state_like) {
    check_like_weight(op, name, *t, weight);
    check_shape(op, name, *t, {B, H}, "(batch, hidden_size)");
  }
  check_like_weight(op, "gates", gates, weight);
  check_shape(op, "gates", gates, {B, 4 * H}, "(batch, 4*hidden_size)");
  check_like_weight(op, "input_hidden", input_hidden, weight);
  check_shape(op, "input_hidden", input_hidden, {B, I + H}, "(batch, input_size + hidden_size)");

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
                                     gates_cont.const_data_ptr(), 4 * H,
                                     c_prev.const_data_ptr(), H,
                                     c_cont.const_data_ptr(), H,
                                     dh.const_data_ptr(), H,
                                     dc.const_data_ptr(), H,
                                     grad_gates.data_ptr(), 4 * H,
                                     grad_cx.data_ptr(), H};
    launch_backward(gates, args);
  }
  Tensor grad_input = at::mm(grad_gates, weight.narrow(1, 0, I));
  Tensor grad_hx = at::mm(grad_gates, weight.narrow(1, I, H));
  Tensor grad_weight = weight_grad(grad_gates, input_hidden);
  Tensor grad_bias = grad_gates.sum(0);
  return {grad_input, grad_hx, grad_cx, grad_weight, grad_bias};
}

}  // namespace lstm_ext
