// torch.nn.LSTM's forward over the layer operator: the layers and directions,
// dropout between layers, initial states, batch_first and unbatched input. In
// C++ rather than in the module's Python because at small sizes that Python
// (a loop, a dozen tensor method calls) cost as much as the operator itself.
// Registered CompositeImplicitAutograd: what it calls (layer_forward through
// the dispatcher, cat, dropout, stack) carries the autograd.
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "lstm_checks.h"
#include "lstm_ops.h"

namespace lstm_ext {
namespace {

// weight_ih_l1_reverse and the like: torch.nn.LSTM's parameter names.
std::string parameter_name(const char* kind, int64_t layer, int64_t direction) {
  return std::string(kind) + "_l" + std::to_string(layer) + (direction ? "_reverse" : "");
}

// Every parameter: a dense float tensor with the input's dtype and device,
// and the shape its layer needs, each named as torch.nn.LSTM names it (the
// layer operator below would name only "weight_ih").
void check_parameters(const char* op, const Tensor& input, at::TensorList params, bool has_biases,
                      int64_t num_layers, int64_t directions, int64_t input_size, int64_t hidden) {
  const int64_t per_layer = has_biases ? 4 : 2;
  const char* kinds[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t layer_input = layer == 0 ? input_size : hidden * directions;
    const std::vector<int64_t> shapes[] = {{4 * hidden, layer_input}, {4 * hidden, hidden}, {4 * hidden}, {4 * hidden}};
    const char* meanings[] = {layer == 0 ? "(4*hidden_size, input_size)"
                                         : directions == 2 ? "(4*hidden_size, 2*hidden_size)"
                                                           : "(4*hidden_size, hidden_size)",
                              "(4*hidden_size, hidden_size)", "(4*hidden_size,)", "(4*hidden_size,)"};
    for (int64_t direction = 0; direction < directions; ++direction) {
      for (int64_t k = 0; k < per_layer; ++k) {
        const Tensor& p = params[(layer * directions + direction) * per_layer + k];
        if (is_like(p, input) && p.sizes() == at::IntArrayRef(shapes[k])) continue;
        // The name is built only for the message: at the course's size every call counts.
        const std::string name = parameter_name(kinds[k], layer, direction);
        check_like(op, name.c_str(), p, "input", input);
        TORCH_CHECK_VALUE(false, op, ": ", name, " must have shape ", python_shape(shapes[k]), " ", meanings[k],
                          ", got ", python_shape(p.sizes()));
      }
    }
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> lstm(const Tensor& input, at::TensorList hx, at::TensorList params,
                                        bool has_biases, int64_t num_layers, double dropout, bool train,
                                        bool bidirectional, bool batch_first) {
  constexpr const char* op = "lstm_ext.LSTM";
  const int64_t directions = bidirectional ? 2 : 1;
  const int64_t per_layer = has_biases ? 4 : 2;
  TORCH_CHECK_VALUE(num_layers > 0 && static_cast<int64_t>(params.size()) == num_layers * directions * per_layer,
                    op, ": expected ", num_layers * directions * per_layer, " parameters (", num_layers,
                    " layers, ", directions, " directions, ", per_layer, " each), got ", params.size());
  check_floating(op, "input", input);
  TORCH_CHECK_VALUE(params[0].dim() == 2 && params[1].dim() == 2 && params[1].size(0) == 4 * params[1].size(1),
                    op, ": weight_ih_l0 must be 2-D and weight_hh_l0 of shape (4*hidden_size, hidden_size), "
                    "got shapes ", python_shape(params[0].sizes()), " and ", python_shape(params[1].sizes()));
  const int64_t input_size = params[0].size(1), hidden = params[1].size(1);
  TORCH_CHECK_VALUE(input.dim() == 2 || input.dim() == 3, op,
                    ": expected input of shape (seq_len, input_size) unbatched or (seq_len, batch, input_size) (",
                    batch_first ? "batch, seq_len" : "seq_len, batch", " first), got a tensor of shape ",
                    python_shape(input.sym_sizes()), " of ", input.dim(), " dims");
  // Sizes of the input and states as SymInts: under torch.export and
  // torch.compile with dynamic shapes, batch and time stay symbolic (a plain
  // size() would specialise them to the example's values).
  TORCH_CHECK_VALUE(input.sym_size(-1) == input_size, op, ": input.size(-1) must be equal to input_size. Expected ",
                    input_size, ", got ", input.sym_size(-1), " (weight_ih_l0 has shape ",
                    python_shape(params[0].sizes()), ")");
  check_parameters(op, input, params, has_biases, num_layers, directions, input_size, hidden);
  const bool batched = input.dim() == 3;
  const Tensor x = !batched ? input.unsqueeze(1) : batch_first ? input.transpose(0, 1) : input;
  // As torch.nn.LSTM: a sequence needs at least one step.
  TORCH_CHECK_VALUE(x.sym_size(0) > 0, op, ": expected sequence length to be larger than 0, got input of shape ",
                    python_shape(input.sym_sizes()));
  const c10::SymInt batch = x.sym_size(1);
  const int64_t states = num_layers * directions;

  std::vector<Tensor> h0, c0;
  if (hx.empty()) {
    // One zero state serves every layer and direction, as h_0 and as c_0.
    const Tensor zeros = at::zeros_symint({batch, hidden}, x.options());
    h0.assign(states, zeros);
    c0.assign(states, zeros);
  } else {
    TORCH_CHECK_TYPE(hx.size() == 2, op, ": hx must be a pair (h_0, c_0), got ", hx.size(), " tensors");
    const std::vector<c10::SymInt> expected =
        batched ? std::vector<c10::SymInt>{states, batch, hidden} : std::vector<c10::SymInt>{states, hidden};
    const char* names[] = {"h_0", "c_0"};
    for (int k = 0; k < 2; ++k) {
      check_like(op, names[k], hx[k], "input", input);
      TORCH_CHECK_VALUE(hx[k].sym_sizes().equals(expected), op, ": expected ", names[k], " of shape ",
                        python_shape(c10::SymIntArrayRef(expected)), ", got a tensor of shape ",
                        python_shape(hx[k].sym_sizes()));
    }
    h0 = (batched ? hx[0] : hx[0].unsqueeze(1)).unbind(0);
    c0 = (batched ? hx[1] : hx[1].unsqueeze(1)).unbind(0);
  }

  // Without a gradient to form (grad mode off, or no input, state or
  // parameter requiring grad), each layer runs layer_inference, which keeps
  // nothing for a backward.
  bool needs_grad = false;
  if (at::GradMode::is_enabled()) {
    needs_grad = input.requires_grad();
    for (const Tensor& t : hx) needs_grad = needs_grad || t.requires_grad();
    for (const Tensor& t : params) needs_grad = needs_grad || t.requires_grad();
  }
  Tensor layer_input = x;
  std::vector<Tensor> h_n, c_n, outputs;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    outputs.clear();
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t index = layer * directions + direction;
      const Tensor* p = &params[index * per_layer];
      const std::optional<Tensor> bias_ih = has_biases ? std::optional<Tensor>(p[2]) : std::nullopt;
      const std::optional<Tensor> bias_hh = has_biases ? std::optional<Tensor>(p[3]) : std::nullopt;
      Tensor output, h, c;
      if (needs_grad) {
        std::tie(output, h, c, std::ignore, std::ignore) =
            layer_forward_op().call(layer_input, h0[index], c0[index], p[0], p[1], bias_ih, bias_hh, direction == 1);
      } else {
        std::tie(output, h, c) =
            layer_inference_op().call(layer_input, h0[index], c0[index], p[0], p[1], bias_ih, bias_hh, direction == 1);
      }
      outputs.push_back(std::move(output));
      h_n.push_back(std::move(h));
      c_n.push_back(std::move(c));
    }
    layer_input = directions == 1 ? outputs[0] : at::cat(outputs, 2);
    if (dropout > 0 && train && layer < num_layers - 1) {
      layer_input = at::dropout(layer_input, dropout, /*train=*/true);
    }
  }
  Tensor h_out = states == 1 ? h_n[0].unsqueeze(0) : at::stack(h_n);
  Tensor c_out = states == 1 ? c_n[0].unsqueeze(0) : at::stack(c_n);
  if (!batched) {
    return {layer_input.squeeze(1), h_out.squeeze(1), c_out.squeeze(1)};
  }
  return {batch_first ? layer_input.transpose(0, 1) : layer_input, h_out, c_out};
}

}  // namespace lstm_ext
