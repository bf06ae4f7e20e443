// torch.nn.LSTM's forward over the layer operator: the layers and directions,
// dropout between layers, initial states, batch_first and unbatched input. In
// C++ rather than in the module's Python because at small sizes that Python
// (a loop, a dozen tensor method calls) cost as much as the operator itself.
// Registered CompositeImplicitAutograd: what it calls (layer_forward through
// the dispatcher, cat, dropout, stack) carries the autograd.
#include <ATen/ATen.h>

#include <sstream>
#include <string>
#include <vector>

#include "lstm_ops.h"

namespace lstm_ext {
namespace {

// (2, 2, 3) and (5,): shapes as Python users see them.
std::string python_shape(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t d = 0; d < sizes.size(); ++d) out << (d ? ", " : "") << sizes[d];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
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
  TORCH_CHECK_VALUE(params[0].dim() == 2 && params[1].dim() == 2, op,
                    ": weight_ih_l0 and weight_hh_l0 must be 2-D, got shapes ", params[0].sizes(), " and ",
                    params[1].sizes());
  const int64_t input_size = params[0].size(1), hidden = params[1].size(1);
  TORCH_CHECK_VALUE(input.dim() == 2 || input.dim() == 3, op,
                    ": expected input of shape (seq_len, input_size) unbatched or (seq_len, batch, input_size) (",
                    batch_first ? "batch, seq_len" : "seq_len, batch", " first), got a tensor of shape ",
                    python_shape(input.sizes()), " of ", input.dim(), " dims");
  TORCH_CHECK_VALUE(input.size(-1) == input_size, op, ": input.size(-1) must be equal to input_size. Expected ",
                    input_size, ", got ", input.size(-1));
  const bool batched = input.dim() == 3;
  const Tensor x = !batched ? input.unsqueeze(1) : batch_first ? input.transpose(0, 1) : input;
  const int64_t batch = x.size(1), states = num_layers * directions;

  std::vector<Tensor> h0, c0;
  if (hx.empty()) {
    // One zero state serves every layer and direction, as h_0 and as c_0.
    const Tensor zeros = at::zeros({batch, hidden}, x.options());
    h0.assign(states, zeros);
    c0.assign(states, zeros);
  } else {
    TORCH_CHECK_TYPE(hx.size() == 2, op, ": hx must be a pair (h_0, c_0), got ", hx.size(), " tensors");
    const std::vector<int64_t> expected =
        batched ? std::vector<int64_t>{states, batch, hidden} : std::vector<int64_t>{states, hidden};
    const char* names[] = {"h_0", "c_0"};
    for (int k = 0; k < 2; ++k) {
      TORCH_CHECK_VALUE(hx[k].sizes() == at::IntArrayRef(expected), op, ": expected ", names[k], " of shape ",
                        python_shape(expected), ", got a tensor of shape ", python_shape(hx[k].sizes()));
    }
    h0 = (batched ? hx[0] : hx[0].unsqueeze(1)).unbind(0);
    c0 = (batched ? hx[1] : hx[1].unsqueeze(1)).unbind(0);
  }

  Tensor layer_input = x;
  std::vector<Tensor> h_n, c_n, outputs;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    outputs.clear();
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t index = layer * directions + direction;
      const Tensor* p = &params[index * per_layer];
      auto [output, h, c, gates, cells] = layer_forward_op().call(
          layer_input, h0[index], c0[index], p[0], p[1], has_biases ? std::optional<Tensor>(p[2]) : std::nullopt,
          has_biases ? std::optional<Tensor>(p[3]) : std::nullopt, direction == 1);
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
