// Autograd for the operators, in C++: a Python autograd.Function costs about
// 60 us per call on the CPU, more than the whole fused cell at small sizes.
// The backward calls the backward operator through the dispatcher, so
// torch.compile traces it as one node.
#include <torch/autograd.h>

#include "lstm_ops.h"

namespace lstm_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool present(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

// The backward operators have no derivative of their own. Recording them
// (create_graph=True) would give silently wrong second derivatives, so that
// is an error, as it is for cuDNN's RNNs. Otherwise they are called below the
// autograd keys, whose fallback costs microseconds per call at small sizes.
class BelowAutograd {
 public:
  explicit BelowAutograd(const char* op) {
    TORCH_CHECK(!at::GradMode::is_enabled(), op,
                ": double backward is not supported (the backward pass ran with create_graph=True); "
                "use torch.nn.LSTM / torch.nn.LSTMCell for higher-order gradients");
  }

 private:
  at::AutoDispatchBelowADInplaceOrView guard_;
};

class CellFunction : public torch::autograd::Function<CellFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx,
                               const Tensor& cx, const Tensor& weight,
                               const std::optional<Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [h, c, gates, input_hidden] = cell_forward_op().call(input, hx, cx, weight, bias);
    ctx->save_for_backward({cx, c, gates, input_hidden, weight});
    ctx->saved_data["has_bias"] = present(bias);
    ctx->mark_non_differentiable({gates, input_hidden});
    ctx->set_materialize_grads(false);  // no zero-filled gradients for gates and input_hidden
    return {h, c, gates, input_hidden};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& cx = saved[0];
    const Tensor& c = saved[1];
    const Tensor grad_h = grads[0].defined() ? grads[0] : at::zeros_like(c);
    const BelowAutograd below("lstm_ext.lstm_cell");
    const Tensor grad_c = grads[1].defined() ? grads[1] : at::zeros_like(c);
    auto [grad_input, grad_hx, grad_cx, grad_weight, grad_bias] =
        cell_backward_op().call(grad_h, grad_c, cx, c, saved[2], saved[3], saved[4]);
    return {grad_input, grad_hx, grad_cx, grad_weight,
            ctx->saved_data["has_bias"].toBool() ? grad_bias : Tensor()};
  }
};

class LayerFunction : public torch::autograd::Function<LayerFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& h0,
                               const Tensor& c0, const Tensor& weight_ih, const Tensor& weight_hh,
                               const std::optional<Tensor>& bias_ih,
                               const std::optional<Tensor>& bias_hh, bool reverse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, h_n, c_n, gates, cells] =
        layer_forward_op().call(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse);
    ctx->save_for_backward({input, h0, c0, weight_ih, weight_hh, output, gates, cells});
    ctx->saved_data["reverse"] = reverse;
    ctx->saved_data["has_bias_ih"] = present(bias_ih);
    ctx->saved_data["has_bias_hh"] = present(bias_hh);
    ctx->mark_non_differentiable({gates, cells});
    ctx->set_materialize_grads(false);
    return {output, h_n, c_n, gates, cells};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor& output = saved[5];
    const Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(output);
    const BelowAutograd below("lstm_ext.LSTM");
    const bool has_bias_ih = ctx->saved_data["has_bias_ih"].toBool();
    const bool has_bias_hh = ctx->saved_data["has_bias_hh"].toBool();
    // Gradient edges: input, h0, c0, weight_ih, weight_hh, then the biases present.
    const size_t weight_edges_end = 5 + has_bias_ih + has_bias_hh;
    const std::array<bool, 4> output_mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                          ctx->needs_input_grad(2),
                                          ctx->needs_input_grad({{3, weight_edges_end}})};
    // grads[1] / grads[2] are undefined for an unused h_n / c_n: the operator takes them as zeros.
    auto [grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias] =
        layer_backward_op().call(grad_output, grads[1], grads[2], saved[0], saved[1], saved[2], saved[3],
                                 saved[4], output, saved[6], saved[7], ctx->saved_data["reverse"].toBool(),
                                 output_mask);
    return {grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, has_bias_ih ? grad_bias : Tensor(),
            has_bias_hh ? grad_bias : Tensor(), Tensor()};
  }
};

// Inference (no grad mode, or nothing requires grad) skips building a graph
// node: at the course's size that node costs a noticeable part of the call.
bool needs_graph(std::initializer_list<const Tensor*> tensors,
                 std::initializer_list<const std::optional<Tensor>*> optional) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : tensors) {
    if (t->requires_grad()) return true;
  }
  for (const auto* t : optional) {
    if (present(*t) && (*t)->requires_grad()) return true;
  }
  return false;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_forward_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse) {
  if (!needs_graph({&input, &h0, &c0, &weight_ih, &weight_hh}, {&bias_ih, &bias_hh})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return layer_forward_op().call(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse);
  }
  auto out = LayerFunction::apply(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse);
  return {out[0], out[1], out[2], out[3], out[4]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> cell_forward_autograd(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& weight,
    const std::optional<Tensor>& bias) {
  if (!needs_graph({&input, &hx, &cx, &weight}, {&bias})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return cell_forward_op().call(input, hx, cx, weight, bias);
  }
  auto out = CellFunction::apply(input, hx, cx, weight, bias);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace lstm_ext
