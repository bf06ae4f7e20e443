// Autograd for the operators, in C++: a Python autograd.Function costs about
// 60 us per call on the CPU, more than the whole fused cell at small sizes.
// The backward calls the backward operator through the dispatcher, so
// torch.compile traces it as one node.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <algorithm>
#include <array>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "autograd_node.h"
#include "layernorm_lstm_ops.h"
#include "lstm_kernels.h"
#include "lstm_ops.h"

namespace lstm_ext {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

bool present(const std::optional<Tensor>& t) { return t.has_value() && t->defined(); }

// The backward operators have no derivative of their own, so a first-order
// backward calls them below the autograd keys (whose fallback costs
// microseconds per call at small sizes), and a backward that must itself be
// differentiable (create_graph=True: gradient penalties, meta-learning,
// torch.func.grad and vjp) is written in differentiable ATen ops instead:
// the forward recomputed from the saved inputs, then the chain rule, so
// every higher-order term is there. It does not ask which inputs require
// grad (under torch.func.vjp the saved inputs no longer say so): it forms
// every gradient, and autograd drops what nobody uses.

// One step forward in ATen ops (csrc/lstm_pointwise.h's formulas) from the
// pre-activations [B, 4H] in the order i, f, g, o; what the step's backward
// needs.
struct CompositeStep {
  Tensor i, f, g, o, c_prev, tanh_c, c, h;
};

CompositeStep composite_step(const Tensor& preact, const Tensor& c_prev) {
  const auto gates = preact.chunk(4, 1);
  CompositeStep step{at::sigmoid(gates[0]), at::sigmoid(gates[1]), at::tanh(gates[2]), at::sigmoid(gates[3]), c_prev};
  step.c = step.f * c_prev + step.i * step.g;
  step.tanh_c = at::tanh(step.c);
  step.h = step.o * step.tanh_c;
  return step;
}

// The step's chain rule: (gradient of the pre-activations [B, 4H], of c_prev)
// from the gradients of h and c.
std::pair<Tensor, Tensor> composite_step_backward(const CompositeStep& s, const Tensor& grad_h,
                                                  const Tensor& grad_c) {
  const Tensor grad_c_total = grad_c + grad_h * s.o * (1 - s.tanh_c * s.tanh_c);
  Tensor grad_preact = at::cat({grad_c_total * s.g * s.i * (1 - s.i), grad_c_total * s.c_prev * s.f * (1 - s.f),
                                grad_c_total * s.i * (1 - s.g * s.g), grad_h * s.tanh_c * s.o * (1 - s.o)},
                               1);
  return {grad_preact, grad_c_total * s.f};
}

// A PackedSequence's steps for the differentiable backward: step t's
// sizes[t] rows at offset[t] of the [N, ...] buffers, the reverse direction
// over each sequence reversed (run_order, its own inverse), as the kernels
// run them (csrc/lstm_ops.cpp).
struct PackedSteps {
  cpu::StepLayout layout;  // rows[t] and offset[t] of each step
  Tensor reversal;

  PackedSteps(const Tensor& batch_sizes, bool reverse, const at::Device& device) : layout(layout_of(batch_sizes)) {
    if (reverse) reversal = at::tensor(packed_reversal(batch_sizes), at::TensorOptions().dtype(at::kLong)).to(device);
  }
  static cpu::StepLayout layout_of(const Tensor& batch_sizes) {
    const Tensor sizes = batch_sizes.contiguous();
    return cpu::StepLayout(sizes.numel(), 0, sizes.const_data_ptr<int64_t>());
  }
  int64_t steps() const { return static_cast<int64_t>(layout.rows.size()); }
  Tensor run_order(const Tensor& t) const { return reversal.defined() ? t.index_select(0, reversal) : t; }
};

// state with its first head.size(0) rows replaced by head (the sequences that
// ran the step; the others keep their final state), differentiably.
Tensor with_head(const Tensor& head, const Tensor& state) {
  const int64_t n = head.size(0), rows = state.size(0);
  return n == rows ? head : at::cat({head, state.narrow(0, n, rows - n)});
}

// The graph nodes are written out rather than made by torch::autograd::Function,
// whose node costs ~10 us more per call at the course's size (boxed saved
// data, a list of every argument, checks of every output). A node holds the
// tensors its backward operator needs as SavedVariables, so the usual checks
// (a second backward, an output modified in place) and saved-tensor hooks
// apply as for any node.
template <size_t N>
struct SavingNode : Node {
  std::array<SavedVariable, N> saved;

  // Saves tensors, each with whether it is an output of this node.
  void save(std::initializer_list<std::pair<const Tensor*, bool>> tensors) {
    size_t k = 0;
    for (const auto& [t, is_output] : tensors) saved[k++] = SavedVariable(*t, is_output);
  }

  std::array<Tensor, N> unpack() {
    std::array<Tensor, N> out;
    const auto self = getptr();
    for (size_t k = 0; k < N; ++k) out[k] = saved[k].unpack(self);
    return out;
  }

  void release_variables() override {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable& v : saved) v.reset_data();
  }
};

// Edges to input, hx, cx, weight, bias.
struct CellBackward final : SavingNode<8> {  // cx, c, gates, input_hidden, weight; input, hx, bias
  bool has_bias = false;

  std::string name() const override { return "LSTMCellBackward"; }

  variable_list apply(variable_list&& grads) override {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto [cx, c, gates, input_hidden, weight, input, hx, bias] = unpack();
    if (at::GradMode::is_enabled()) {
      const int64_t I = input.size(1), H = hx.size(1);
      const Tensor input_hidden_graph = at::cat({input, hx}, 1);
      Tensor preact = at::mm(input_hidden_graph, weight.t());
      if (bias.defined()) preact = preact + bias;
      const CompositeStep step = composite_step(preact, cx);
      const auto [grad_preact, grad_cx] = composite_step_backward(
          step, grads[0].defined() ? grads[0] : at::zeros_like(step.h),
          grads[1].defined() ? grads[1] : at::zeros_like(step.c));
      const Tensor grad_input_hidden = at::mm(grad_preact, weight);
      return {grad_input_hidden.narrow(1, 0, I), grad_input_hidden.narrow(1, I, H), grad_cx,
              at::mm(grad_preact.t(), input_hidden_graph), has_bias ? grad_preact.sum(0) : Tensor()};
    }
    const at::AutoDispatchBelowADInplaceOrView below;
    // grads[0] / grads[1] are undefined for an unused h / c.
    const Tensor grad_h = grads[0].defined() ? grads[0] : at::zeros_like(c);
    const Tensor grad_c = grads[1].defined() ? grads[1] : at::zeros_like(c);
    auto [grad_input, grad_hx, grad_cx, grad_weight, grad_bias] =
        cell_backward_op().call(grad_h, grad_c, cx, c, gates, input_hidden, weight);
    return {grad_input, grad_hx, grad_cx, grad_weight, has_bias ? grad_bias : Tensor()};
  }
};

// The states' gradients [1, B, ...] of a node whose states were set up so
// (layer_forward_graph's leading_one), as [B, ...].
void drop_leading_one(variable_list& grads, bool leading_one, size_t states) {
  if (!leading_one) return;
  for (size_t k = 1; k <= states; ++k) {
    if (grads[k].defined()) grads[k] = grads[k].squeeze(0);
  }
}

// Edges to input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr.
struct LayerBackward final : SavingNode<11> {  // input, h0, c0, weight_ih, weight_hh, output, gates, cells,
                                               // bias_ih, bias_hh, weight_hr (projections)
  bool reverse = false, has_bias_ih = false, has_bias_hh = false;
  bool leading_one = false;  // h_n and c_n as [1, B, ...]
  std::optional<Tensor> batch_sizes;  // a PackedSequence's (int64, never differentiated)

  std::string name() const override { return "LSTMLayerBackward"; }

  variable_list apply(variable_list&& grads) override {
    const std::lock_guard<std::mutex> lock(mutex_);
    drop_leading_one(grads, leading_one, 2);
    const auto [input, h0, c0, weight_ih, weight_hh, output, gates, cells, bias_ih, bias_hh, weight_hr] = unpack();
    if (at::GradMode::is_enabled()) {
      if (batch_sizes.has_value()) {
        return differentiable_packed(grads, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr);
      }
      return differentiable(grads, input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr);
    }
    const at::AutoDispatchBelowADInplaceOrView below;
    // grads[0], grads[1], grads[2] are undefined for an unused output, h_n,
    // c_n: the operator takes them as zeros.
    const std::optional<Tensor> grad_output =
        grads[0].defined() ? std::optional<Tensor>(grads[0]) : std::nullopt;
    const std::array<bool, 4> output_mask{task_should_compute_output(0), task_should_compute_output(1),
                                          task_should_compute_output(2), task_should_compute_output({{3, 8}})};
    const std::optional<Tensor> projection = weight_hr.defined() ? std::optional<Tensor>(weight_hr) : std::nullopt;
    auto [grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias, grad_weight_hr] =
        layer_backward_op().call(grad_output, grads[1], grads[2], input, h0, c0, weight_ih, weight_hh, output,
                                 gates, cells, reverse, output_mask, projection, batch_sizes);
    return {grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, has_bias_ih ? grad_bias : Tensor(),
            has_bias_hh ? grad_bias : Tensor(), grad_weight_hr};
  }

  // Backpropagation through time in ATen ops, the forward recomputed first.
  variable_list differentiable(const variable_list& grads, const Tensor& input, const Tensor& h0, const Tensor& c0,
                               const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& bias_ih,
                               const Tensor& bias_hh, const Tensor& weight_hr) const {
    const int64_t T = input.size(0), B = input.size(1), I = input.size(2), H = c0.size(1), R = h0.size(1);
    const bool projected_h = weight_hr.defined();
    Tensor projected = at::matmul(input, weight_ih.t());
    if (bias_ih.defined()) projected = projected + bias_ih;
    if (bias_hh.defined()) projected = projected + bias_hh;
    std::vector<CompositeStep> steps;  // in the order they ran
    std::vector<Tensor> h_prev;
    Tensor h = h0, c = c0;
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      h_prev.push_back(h);
      steps.push_back(composite_step(at::addmm(projected[t], h, weight_hh.t()), c));
      h = projected_h ? at::mm(steps.back().h, weight_hr.t()) : steps.back().h;
      c = steps.back().c;
    }
    // grad_h is the gradient of the state that recurs: r with projections.
    Tensor grad_h = grads[1].defined() ? grads[1] : at::zeros_like(h0);
    Tensor grad_c = grads[2].defined() ? grads[2] : at::zeros_like(c0);
    Tensor grad_weight_hr = projected_h ? at::zeros_like(weight_hr) : Tensor();
    std::vector<Tensor> grad_preacts(T);  // in time order
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      if (grads[0].defined()) grad_h = grad_h + grads[0][t];
      Tensor grad_hidden = grad_h;
      if (projected_h) {
        grad_weight_hr = grad_weight_hr + at::mm(grad_h.t(), steps[s].h);
        grad_hidden = at::mm(grad_h, weight_hr);
      }
      std::tie(grad_preacts[t], grad_c) = composite_step_backward(steps[s], grad_hidden, grad_c);
      grad_h = at::mm(grad_preacts[t], weight_hh);
    }
    if (reverse) std::reverse(h_prev.begin(), h_prev.end());  // into time order
    const Tensor grad_preact = T == 0 ? at::zeros({0, B, 4 * H}, h0.options()) : at::stack(grad_preacts);
    const Tensor flat = grad_preact.reshape({T * B, 4 * H});
    const Tensor grad_bias = grad_preact.sum(at::IntArrayRef{0, 1});
    return {at::matmul(grad_preact, weight_ih), grad_h, grad_c, at::mm(flat.t(), input.reshape({T * B, I})),
            T == 0 ? at::zeros_like(weight_hh) : at::mm(flat.t(), at::stack(h_prev).reshape({T * B, R})),
            has_bias_ih ? grad_bias : Tensor(), has_bias_hh ? grad_bias : Tensor(), grad_weight_hr};
  }

  // The same over a PackedSequence's rows (input, output and its gradient [N, ...]).
  variable_list differentiable_packed(const variable_list& grads, const Tensor& input, const Tensor& h0,
                                      const Tensor& c0, const Tensor& weight_ih, const Tensor& weight_hh,
                                      const Tensor& bias_ih, const Tensor& bias_hh, const Tensor& weight_hr) const {
    const PackedSteps rows(*batch_sizes, reverse, input.device());
    const int64_t T = rows.steps();
    const bool projected_h = weight_hr.defined();
    const Tensor x = rows.run_order(input);
    Tensor projected = at::matmul(x, weight_ih.t());
    if (bias_ih.defined()) projected = projected + bias_ih;
    if (bias_hh.defined()) projected = projected + bias_hh;
    std::vector<CompositeStep> steps;
    std::vector<Tensor> h_prev(T);
    Tensor h = h0, c = c0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = rows.layout.rows[t];
      h_prev[t] = h.narrow(0, 0, n);
      steps.push_back(composite_step(at::addmm(projected.narrow(0, rows.layout.offset[t], n), h_prev[t], weight_hh.t()),
                                     c.narrow(0, 0, n)));
      h = with_head(projected_h ? at::mm(steps.back().h, weight_hr.t()) : steps.back().h, h);
      c = with_head(steps.back().c, c);
    }
    // Each sequence's h_n and c_n are its state after its own last step.
    Tensor grad_h = grads[1].defined() ? grads[1] : at::zeros_like(h0);
    Tensor grad_c = grads[2].defined() ? grads[2] : at::zeros_like(c0);
    const Tensor grad_output = grads[0].defined() ? rows.run_order(grads[0]) : Tensor();
    Tensor grad_weight_hr = projected_h ? at::zeros_like(weight_hr) : Tensor();
    std::vector<Tensor> grad_preacts(T);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t n = rows.layout.rows[t];
      Tensor grad_step = grad_h.narrow(0, 0, n);
      if (grad_output.defined()) grad_step = grad_step + grad_output.narrow(0, rows.layout.offset[t], n);
      Tensor grad_hidden = grad_step;
      if (projected_h) {
        grad_weight_hr = grad_weight_hr + at::mm(grad_step.t(), steps[t].h);
        grad_hidden = at::mm(grad_step, weight_hr);
      }
      Tensor grad_c_prev;
      std::tie(grad_preacts[t], grad_c_prev) = composite_step_backward(steps[t], grad_hidden, grad_c.narrow(0, 0, n));
      grad_h = with_head(at::mm(grad_preacts[t], weight_hh), grad_h);
      grad_c = with_head(grad_c_prev, grad_c);
    }
    const Tensor grad_preact = at::cat(grad_preacts);  // packed order
    const Tensor grad_bias = grad_preact.sum(0);
    return {rows.run_order(at::mm(grad_preact, weight_ih)), grad_h, grad_c, at::mm(grad_preact.t(), x),
            at::mm(grad_preact.t(), at::cat(h_prev)), has_bias_ih ? grad_bias : Tensor(),
            has_bias_hh ? grad_bias : Tensor(), grad_weight_hr};
  }
};

// The GRU's: edges to input, h0, weight_ih, weight_hh, bias_ih, bias_hh.
struct GruLayerBackward final : SavingNode<9> {  // input, h0, weight_ih, weight_hh, output, gates, hidden_n,
                                                 // bias_ih, bias_hh
  bool reverse = false, has_bias_ih = false, has_bias_hh = false;
  bool leading_one = false;  // h_n as [1, B, H]
  std::optional<Tensor> batch_sizes;

  std::string name() const override { return "GRULayerBackward"; }

  variable_list apply(variable_list&& grads) override {
    const std::lock_guard<std::mutex> lock(mutex_);
    drop_leading_one(grads, leading_one, 1);
    const auto [input, h0, weight_ih, weight_hh, output, gates, hidden_n, bias_ih, bias_hh] = unpack();
    if (at::GradMode::is_enabled()) {
      if (batch_sizes.has_value()) return differentiable_packed(grads, input, h0, weight_ih, weight_hh, bias_ih, bias_hh);
      return differentiable(grads, input, h0, weight_ih, weight_hh, bias_ih, bias_hh);
    }
    const at::AutoDispatchBelowADInplaceOrView below;
    // Undefined grads (an unused output or h_n): zeros, in the operator.
    const std::optional<Tensor> grad_output =
        grads[0].defined() ? std::optional<Tensor>(grads[0]) : std::nullopt;
    const std::array<bool, 3> output_mask{task_should_compute_output(0), task_should_compute_output(1),
                                          task_should_compute_output({{2, 6}})};  // [2, 6): the weights and biases
    auto [grad_input, grad_h0, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh] =
        gru_layer_backward_op().call(grad_output, grads[1], input, h0, weight_ih, weight_hh, output, gates,
                                     hidden_n, reverse, output_mask, batch_sizes);
    return {grad_input, grad_h0, grad_weight_ih, grad_weight_hh, has_bias_ih ? grad_bias_ih : Tensor(),
            has_bias_hh ? grad_bias_hh : Tensor()};
  }

  // Backpropagation through time in ATen ops (csrc/gru_pointwise.h's
  // formulas), the forward recomputed first.
  variable_list differentiable(const variable_list& grads, const Tensor& input, const Tensor& h0,
                               const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& bias_ih,
                               const Tensor& bias_hh) const {
    const int64_t T = input.size(0), B = input.size(1), I = input.size(2), H = h0.size(1);
    Tensor projected = at::matmul(input, weight_ih.t());
    if (bias_ih.defined()) projected = projected + bias_ih;
    struct Step {
      Tensor r, z, n, hidden_n, h_prev;
    };
    std::vector<Step> steps;  // in the order they ran
    Tensor h = h0;
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = reverse ? T - 1 - s : s;
      Tensor recurrent = at::mm(h, weight_hh.t());
      if (bias_hh.defined()) recurrent = recurrent + bias_hh;
      const auto gi = projected[t].chunk(3, 1);
      const auto gh = recurrent.chunk(3, 1);
      Step step{at::sigmoid(gi[0] + gh[0]), at::sigmoid(gi[1] + gh[1]), Tensor(), gh[2], h};
      step.n = at::tanh(gi[2] + step.r * gh[2]);
      h = step.n + step.z * (h - step.n);
      steps.push_back(std::move(step));
    }
    Tensor grad_h = grads[1].defined() ? grads[1] : at::zeros_like(h0);
    std::vector<Tensor> grad_inputs(T), grad_hiddens(T), h_prev(T);  // in time order
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const Step& st = steps[s];
      if (grads[0].defined()) grad_h = grad_h + grads[0][t];
      const Tensor grad_n = grad_h * (1 - st.z) * (1 - st.n * st.n);
      const Tensor grad_z = grad_h * (st.h_prev - st.n) * st.z * (1 - st.z);
      const Tensor grad_r = grad_n * st.hidden_n * st.r * (1 - st.r);
      grad_inputs[t] = at::cat({grad_r, grad_z, grad_n}, 1);
      grad_hiddens[t] = at::cat({grad_r, grad_z, grad_n * st.r}, 1);
      grad_h = grad_h * st.z + at::mm(grad_hiddens[t], weight_hh);
      h_prev[t] = st.h_prev;
    }
    if (T == 0) {
      return {at::zeros_like(input), grad_h, at::zeros_like(weight_ih), at::zeros_like(weight_hh),
              has_bias_ih ? at::zeros({3 * H}, h0.options()) : Tensor(),
              has_bias_hh ? at::zeros({3 * H}, h0.options()) : Tensor()};
    }
    const Tensor grad_input_gates = at::stack(grad_inputs), grad_hidden_gates = at::stack(grad_hiddens);
    const Tensor flat_input = grad_input_gates.reshape({T * B, 3 * H});
    const Tensor flat_hidden = grad_hidden_gates.reshape({T * B, 3 * H});
    return {at::matmul(grad_input_gates, weight_ih), grad_h, at::mm(flat_input.t(), input.reshape({T * B, I})),
            at::mm(flat_hidden.t(), at::stack(h_prev).reshape({T * B, H})),
            has_bias_ih ? flat_input.sum(0) : Tensor(), has_bias_hh ? flat_hidden.sum(0) : Tensor()};
  }

  // The same over a PackedSequence's rows.
  variable_list differentiable_packed(const variable_list& grads, const Tensor& input, const Tensor& h0,
                                      const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& bias_ih,
                                      const Tensor& bias_hh) const {
    const PackedSteps rows(*batch_sizes, reverse, input.device());
    const int64_t T = rows.steps();
    const Tensor x = rows.run_order(input);
    Tensor projected = at::matmul(x, weight_ih.t());
    if (bias_ih.defined()) projected = projected + bias_ih;
    struct Step {
      Tensor r, z, n, hidden_n, h_prev;
    };
    std::vector<Step> steps;
    Tensor h = h0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t rows_t = rows.layout.rows[t];
      const Tensor h_prev = h.narrow(0, 0, rows_t);
      Tensor recurrent = at::mm(h_prev, weight_hh.t());
      if (bias_hh.defined()) recurrent = recurrent + bias_hh;
      const auto gi = projected.narrow(0, rows.layout.offset[t], rows_t).chunk(3, 1);
      const auto gh = recurrent.chunk(3, 1);
      Step step{at::sigmoid(gi[0] + gh[0]), at::sigmoid(gi[1] + gh[1]), Tensor(), gh[2], h_prev};
      step.n = at::tanh(gi[2] + step.r * gh[2]);
      h = with_head(step.n + step.z * (h_prev - step.n), h);
      steps.push_back(std::move(step));
    }
    Tensor grad_h = grads[1].defined() ? grads[1] : at::zeros_like(h0);
    const Tensor grad_output = grads[0].defined() ? rows.run_order(grads[0]) : Tensor();
    std::vector<Tensor> grad_inputs(T), grad_hiddens(T), h_prev(T);  // packed order
    for (int64_t t = T - 1; t >= 0; --t) {
      const Step& st = steps[t];
      const int64_t rows_t = rows.layout.rows[t];
      Tensor grad_step = grad_h.narrow(0, 0, rows_t);
      if (grad_output.defined()) grad_step = grad_step + grad_output.narrow(0, rows.layout.offset[t], rows_t);
      const Tensor grad_n = grad_step * (1 - st.z) * (1 - st.n * st.n);
      const Tensor grad_z = grad_step * (st.h_prev - st.n) * st.z * (1 - st.z);
      const Tensor grad_r = grad_n * st.hidden_n * st.r * (1 - st.r);
      grad_inputs[t] = at::cat({grad_r, grad_z, grad_n}, 1);
      grad_hiddens[t] = at::cat({grad_r, grad_z, grad_n * st.r}, 1);
      grad_h = with_head(grad_step * st.z + at::mm(grad_hiddens[t], weight_hh), grad_h);
      h_prev[t] = st.h_prev;
    }
    const Tensor flat_input = at::cat(grad_inputs), flat_hidden = at::cat(grad_hiddens);
    return {rows.run_order(at::mm(flat_input, weight_ih)), grad_h, at::mm(flat_input.t(), x),
            at::mm(flat_hidden.t(), at::cat(h_prev)), has_bias_ih ? flat_input.sum(0) : Tensor(),
            has_bias_hh ? flat_hidden.sum(0) : Tensor()};
  }
};

// Edges to input, h0, c0, weight_ih, weight_hh, bias, ln_ih_weight,
// ln_hh_weight, ln_c_weight, ln_c_bias, bias_hh (the masks are zoneout's
// draws: no gradient). bias_hh's gradient is bias's.
struct LnLayerBackward final : SavingNode<19> {  // input, h0, c0, weight_ih, weight_hh, the four LN tensors,
                                                 // mask_c, mask_h, output, gates, cells, ih, ih_mean, ih_rstd,
                                                 // hh_norm, stats
  bool reverse = false, has_bias = false, has_bias_hh = false;
  double rate_c = 0, rate_h = 0;
  std::optional<Tensor> batch_sizes;

  std::string name() const override { return "LayerNormLSTMLayerBackward"; }

  variable_list apply(variable_list&& grads) override {
    const std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK_NOT_IMPLEMENTED(!at::GradMode::is_enabled(),
                                "lstm_ext.LayerNormLSTM: double backward (create_graph=True) is not supported; "
                                "its backward is not itself differentiable");
    const auto s = unpack();
    const auto maybe = [](const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; };
    const at::AutoDispatchBelowADInplaceOrView below;
    const Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(s[11]);
    // grads[1] / grads[2] are undefined for an unused h_n / c_n: the operator takes them as zeros.
    const auto g = ln_lstm_layer_backward_op().call(
        grad_output, maybe(grads[1]), maybe(grads[2]), s[0], s[1], s[2], s[3], s[4], has_bias, maybe(s[5]),
        maybe(s[6]), maybe(s[7]), maybe(s[8]), maybe(s[9]), maybe(s[10]), rate_c, rate_h, reverse, s[11], s[12],
        s[13], s[14], s[15], s[16], s[17], s[18], batch_sizes);
    return {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g), std::get<4>(g),
            std::get<5>(g), std::get<6>(g), std::get<7>(g), std::get<8>(g), std::get<9>(g),
            has_bias_hh ? std::get<5>(g) : Tensor()};
  }
};

// A state [B, ...] as [1, B, ...], not a view (below autograd: no node).
Tensor with_leading_one(const Tensor& state) {
  std::vector<int64_t> sizes{1};
  sizes.insert(sizes.end(), state.sizes().begin(), state.sizes().end());
  return at::_unsafe_view(state, sizes);
}

}  // namespace

// Whether to build a graph node: inference (no grad mode, or nothing
// requires grad) skips it, as at the course's size that node costs a
// noticeable part of the call. Forward-mode AD (dual tensors,
// torch.func.jvp) has no formula here: an error, never a silently missing
// tangent.
bool needs_graph(const char* op, std::initializer_list<const Tensor*> tensors,
                 std::initializer_list<const std::optional<Tensor>*> optional) {
  bool requires_grad = false;
  const auto inspect = [&](const Tensor& t) {
    TORCH_CHECK_NOT_IMPLEMENTED(!t._fw_grad(/*level=*/0).defined(), op,
                                ": forward-mode AD (dual tensors, torch.func.jvp) is not supported; "
                                "use torch.nn's module (LSTM, LSTMCell, GRU) for it");
    requires_grad = requires_grad || t.requires_grad();
  };
  for (const Tensor* t : tensors) {
    if (t->defined()) inspect(*t);
  }
  for (const auto* t : optional) {
    if (present(*t)) inspect(**t);
  }
  return requires_grad && at::GradMode::is_enabled();
}

std::tuple<Tensor, Tensor, Tensor> layer_inference_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes) {
  // It saves nothing for a backward. Called where one is needed (a graph
  // traced without grad and run again with it: torch.export's decompositions,
  // an exported module called in training), it runs as layer_forward, so no
  // gradient is lost.
  if (needs_graph("lstm_ext.layer_inference", {&input, &h0, &c0, &weight_ih, &weight_hh},
                  {&bias_ih, &bias_hh, &weight_hr})) {
    auto [output, h_n, c_n, gates, cells] =
        layer_forward_autograd(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr, batch_sizes);
    return {output, h_n, c_n};
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return layer_inference_op().call(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr,
                                   batch_sizes);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_forward_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes) {
  return layer_forward_graph(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr, batch_sizes,
                             /*leading_one=*/false);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_forward_graph(
    const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
    const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
    const std::optional<Tensor>& bias_hh, bool reverse, const std::optional<Tensor>& weight_hr,
    const std::optional<Tensor>& batch_sizes, bool leading_one) {
  const bool graph = needs_graph("lstm_ext.LSTM", {&input, &h0, &c0, &weight_ih, &weight_hh},
                                 {&bias_ih, &bias_hh, &weight_hr});
  Tensor output, h_n, c_n, gates, cells;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(output, h_n, c_n, gates, cells) =
        layer_forward_op().call(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, weight_hr, batch_sizes);
    if (leading_one) {
      h_n = with_leading_one(h_n);
      c_n = with_leading_one(c_n);
    }
  }
  if (graph) {
    auto node = make_node<LayerBackward>();
    node->leading_one = leading_one;
    node->set_next_edges(
        torch::autograd::collect_next_edges(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr));
    torch::autograd::set_history({output, h_n, c_n}, node);
    const Tensor none;
    node->save({{&input, false}, {&h0, false}, {&c0, false}, {&weight_ih, false}, {&weight_hh, false},
                {&output, true}, {&gates, false}, {&cells, false}, {present(bias_ih) ? &*bias_ih : &none, false},
                {present(bias_hh) ? &*bias_hh : &none, false}, {present(weight_hr) ? &*weight_hr : &none, false}});
    node->reverse = reverse;
    node->has_bias_ih = present(bias_ih);
    node->has_bias_hh = present(bias_hh);
    node->batch_sizes = batch_sizes;
  }
  return {output, h_n, c_n, gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_layer_forward_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes) {
  return gru_layer_forward_graph(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes,
                                 /*leading_one=*/false);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gru_layer_forward_graph(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes, bool leading_one) {
  const bool graph = needs_graph("lstm_ext.GRU", {&input, &h0, &weight_ih, &weight_hh}, {&bias_ih, &bias_hh});
  Tensor output, h_n, gates, hidden_n;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(output, h_n, gates, hidden_n) =
        gru_layer_forward_op().call(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes);
    if (leading_one) h_n = with_leading_one(h_n);
  }
  if (graph) {
    auto node = make_node<GruLayerBackward>();
    node->leading_one = leading_one;
    node->set_next_edges(torch::autograd::collect_next_edges(input, h0, weight_ih, weight_hh, bias_ih, bias_hh));
    torch::autograd::set_history({output, h_n}, node);
    const Tensor none;
    node->save({{&input, false}, {&h0, false}, {&weight_ih, false}, {&weight_hh, false}, {&output, true},
                {&gates, false}, {&hidden_n, false}, {present(bias_ih) ? &*bias_ih : &none, false},
                {present(bias_hh) ? &*bias_hh : &none, false}});
    node->reverse = reverse;
    node->has_bias_ih = present(bias_ih);
    node->has_bias_hh = present(bias_hh);
    node->batch_sizes = batch_sizes;
  }
  return {output, h_n, gates, hidden_n};
}

std::tuple<Tensor, Tensor> gru_layer_inference_autograd(
    const Tensor& input, const Tensor& h0, const Tensor& weight_ih, const Tensor& weight_hh,
    const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh, bool reverse,
    const std::optional<Tensor>& batch_sizes) {
  // As layer_inference_autograd: where a graph is needed it runs as the
  // forward that keeps what the backward reads.
  if (needs_graph("lstm_ext.gru_layer_inference", {&input, &h0, &weight_ih, &weight_hh}, {&bias_ih, &bias_hh})) {
    auto [output, h_n, gates, hidden_n] =
        gru_layer_forward_autograd(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes);
    return {output, h_n};
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return gru_layer_inference_op().call(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, batch_sizes);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> cell_forward_autograd(
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& weight,
    const std::optional<Tensor>& bias) {
  const bool graph = needs_graph("lstm_ext.lstm_cell", {&input, &hx, &cx, &weight}, {&bias});
  Tensor h, c, gates, input_hidden;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(h, c, gates, input_hidden) = cell_forward_op().call(input, hx, cx, weight, bias);
  }
  if (graph) {
    auto node = make_node<CellBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(input, hx, cx, weight, bias));
    torch::autograd::set_history({h, c}, node);
    const Tensor none;
    node->save({{&cx, false}, {&c, true}, {&gates, false}, {&input_hidden, false}, {&weight, false},
                {&input, false}, {&hx, false}, {present(bias) ? &*bias : &none, false}});
    node->has_bias = present(bias);
  }
  return {h, c, gates, input_hidden};
}

LnLayerOutputs ln_lstm_layer_forward_autograd(LSTM_EXT_LN_LAYER_PARAMS) {
  const bool graph = needs_graph("lstm_ext.LayerNormLSTM", {&input, &h0, &c0, &weight_ih, &weight_hh},
                                 {&bias, &ln_ih_weight, &ln_hh_weight, &ln_c_weight, &ln_c_bias, &bias_hh});
  LnLayerOutputs result;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    result = ln_lstm_layer_forward_op().call(LSTM_EXT_LN_LAYER_NAMES);
  }
  if (graph) {
    auto& [output, h_n, c_n, gates, cells, ih, ih_mean, ih_rstd, hh_norm, stats] = result;
    auto node = make_node<LnLayerBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(input, h0, c0, weight_ih, weight_hh, bias, ln_ih_weight,
                                                             ln_hh_weight, ln_c_weight, ln_c_bias, bias_hh));
    torch::autograd::set_history({output, h_n, c_n}, node);
    const Tensor none;
    const auto or_none = [&](const std::optional<Tensor>& t) { return present(t) ? &*t : &none; };
    node->save({{&input, false}, {&h0, false}, {&c0, false}, {&weight_ih, false}, {&weight_hh, false},
                {or_none(ln_ih_weight), false}, {or_none(ln_hh_weight), false}, {or_none(ln_c_weight), false},
                {or_none(ln_c_bias), false}, {or_none(zoneout_cell_mask), false},
                {or_none(zoneout_hidden_mask), false}, {&output, true}, {&gates, false}, {&cells, false},
                {&ih, false}, {&ih_mean, false}, {&ih_rstd, false}, {&hh_norm, false}, {&stats, false}});
    node->reverse = reverse;
    node->has_bias = present(bias);
    node->has_bias_hh = present(bias_hh);
    node->rate_c = zoneout_cell;
    node->rate_h = zoneout_hidden;
    node->batch_sizes = batch_sizes;
  }
  return result;
}

std::tuple<Tensor, Tensor, Tensor> ln_lstm_layer_inference_autograd(LSTM_EXT_LN_LAYER_PARAMS) {
  // As layer_inference_autograd: where a graph is needed it runs as the
  // forward that keeps what the backward reads.
  if (needs_graph("lstm_ext.LayerNormLSTM", {&input, &h0, &c0, &weight_ih, &weight_hh},
                  {&bias, &ln_ih_weight, &ln_hh_weight, &ln_c_weight, &ln_c_bias, &bias_hh})) {
    const auto result = ln_lstm_layer_forward_autograd(LSTM_EXT_LN_LAYER_NAMES);
    return {std::get<0>(result), std::get<1>(result), std::get<2>(result)};
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return ln_lstm_layer_inference_op().call(LSTM_EXT_LN_LAYER_NAMES);
}

}  // namespace lstm_ext
