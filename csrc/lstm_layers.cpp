// torch.nn.LSTM's and torch.nn.GRU's forwards over the layer operators: the
// layers and directions,
// dropout between layers, initial states, batch_first and unbatched input. In
// C++ rather than in the module's Python because at small sizes that Python
// (a loop, a dozen tensor method calls) cost as much as the operator itself.
// Registered CompositeImplicitAutograd: what it calls (layer_forward through
// the dispatcher, cat, dropout, stack) carries the autograd; one layer and
// direction in plain eager mode calls the layer's Autograd kernel itself
// (run_stack's leading_one).
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <array>
#include <string>
#include <tuple>
#include <vector>

#include "layernorm_lstm_ops.h"
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
// layer operator below would name only "weight_ih"). proj: the LSTM's
// proj_size (0: none), whose weight_hr_l{k} ends each layer's parameters.
void check_parameters(const char* op, const Tensor& input, at::TensorList params, bool has_biases,
                      int64_t num_layers, int64_t directions, int64_t input_size, int64_t hidden, int64_t gates,
                      int64_t proj) {
  const int64_t per_layer = (has_biases ? 4 : 2) + (proj > 0);
  // Each parameter kind's name, shape and meaning, in torch's flat order.
  const char* kinds[] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"};
  const int64_t dims[] = {2, 2, 1, 1, 2};
  const std::string g = "(" + std::to_string(gates) + "*hidden_size";
  const std::string h_width = proj > 0 ? "proj_size" : "hidden_size";
  const std::string input_meanings[] = {g + ", input_size)", g + ", 2*" + h_width + ")", g + ", " + h_width + ")"};
  const std::string hidden_meaning = g + ", " + h_width + ")", bias_meaning = g + ",)";
  const std::string projection_meaning = "(proj_size, hidden_size)";
  const int64_t width = proj > 0 ? proj : hidden, G = gates * hidden;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t layer_input = layer == 0 ? input_size : width * directions;
    const int64_t shapes[][2] = {{G, layer_input}, {G, width}, {G, 0}, {G, 0}, {proj, hidden}};
    const std::string* meanings[] = {&input_meanings[layer == 0 ? 0 : directions == 2 ? 1 : 2], &hidden_meaning,
                                     &bias_meaning, &bias_meaning, &projection_meaning};
    for (int64_t direction = 0; direction < directions; ++direction) {
      for (int64_t k = 0; k < per_layer; ++k) {
        const int64_t kind = k >= 2 && !has_biases ? 4 : k;  // without biases weight_hr is third
        const at::IntArrayRef expected(shapes[kind], dims[kind]);
        const Tensor& p = params[(layer * directions + direction) * per_layer + k];
        if (is_like(p, input) && p.sizes() == expected) continue;
        // The name is built only for the message: at the course's size every call counts.
        const std::string name = parameter_name(kinds[kind], layer, direction);
        check_like(op, name.c_str(), p, "input", input);
        TORCH_CHECK_VALUE(false, op, ": ", name, " must have shape ", python_shape(expected), " ", *meanings[kind],
                          ", got ", python_shape(p.sizes()));
      }
    }
  }
}

// sizes with a leading 1: a final state [B, H] as [1, B, H]. Symbolic, so
// that torch.export and torch.compile keep B dynamic.
std::vector<c10::SymInt> prepend_one(c10::SymIntArrayRef sizes) {
  std::vector<c10::SymInt> out{c10::SymInt(1)};
  out.insert(out.end(), sizes.begin(), sizes.end());
  return out;
}

// Whether the dispatcher, called with these tensors now, would run an
// operator's Autograd kernel first: no key above autograd (autocast, the
// JIT tracer, functorch, a TorchDispatchMode or tensor subclass's TLS
// snapshot) in the tensors' keys and the thread's.
bool dispatches_to_autograd(const Tensor& input, at::TensorList hx, at::TensorList params) {
  c10::DispatchKeySet keys = input.key_set();
  for (const Tensor& t : hx) keys = keys | t.key_set();
  for (const Tensor& t : params) {
    if (t.defined()) keys = keys | t.key_set();
  }
  const c10::impl::LocalDispatchKeySet local = c10::impl::tls_local_dispatch_key_set();
  const c10::DispatchKey key = ((keys | local.included_) - local.excluded_).highestPriorityTypeId();
  return key == c10::DispatchKey::AutogradCPU || key == c10::DispatchKey::AutogradCUDA;
}

// A PackedSequence's batch_sizes and its permutations (none when the batch
// came sorted); all none for a padded input.
struct Packing {
  std::optional<Tensor> batch_sizes, sorted_indices, unsorted_indices;
};

// What differs between torch.nn.LSTM's forward and torch.nn.GRU's here.
struct StackSpec {
  const char* op;
  int64_t gates;
  int64_t states;              // per layer and direction: (h, c) or (h)
  const char* hx_description;  // for the message on a wrong hx
  bool projections;            // takes weight_hr (torch.nn.LSTM's proj_size)
};

// The driver of both: checks, batch_first and unbatched input, initial
// states, layers and directions with dropout between layers. run(input,
// states, params of the layer and direction, bias_ih, bias_hh, weight_hr,
// reverse, needs_grad, leading_one) runs one layer and direction and returns
// (output, its final states); with leading_one it may return the states as
// [1, B, ...], run_stack's h_n and c_n as they are. Returns (output, the
// final states stacked, one tensor per kind). As in torch's flat weight list, projections show as a fifth (third
// without biases) parameter per layer and direction, weight_hr. With
// packing.batch_sizes, input is a PackedSequence's data (N, I), each layer's
// output (N, D * H) packed the same way, batch the longest step's rows, hx
// and the final states in the caller's order (sorted_indices, unsorted_indices);
// batch_first does not apply, and run passes batch_sizes to the layer
// operators (which check its values).
template <typename Run>
std::pair<Tensor, std::vector<Tensor>> run_stack(const StackSpec& spec, const Tensor& input, at::TensorList hx,
                                                 at::TensorList params, bool has_biases, int64_t num_layers,
                                                 double dropout, bool train, bool bidirectional, bool batch_first,
                                                 const Packing& packing, const Run& run) {
  const char* op = spec.op;
  const int64_t directions = bidirectional ? 2 : 1;
  const int64_t plain = has_biases ? 4 : 2;
  const int64_t count = static_cast<int64_t>(params.size());
  const bool projections = spec.projections && num_layers > 0 && count == num_layers * directions * (plain + 1);
  const int64_t per_layer = plain + projections;
  TORCH_CHECK_VALUE(num_layers > 0 && count == num_layers * directions * per_layer, op, ": expected ",
                    num_layers * directions * plain, " parameters (", num_layers, " layers, ", directions,
                    " directions, ", plain, " each", spec.projections ? ", one more each with projections" : "",
                    "), got ", params.size());
  check_floating(op, "input", input);
  const Tensor& weight_hr0 = params[per_layer - 1];
  TORCH_CHECK_VALUE(!projections || (weight_hr0.dim() == 2 && weight_hr0.size(0) > 0), op,
                    ": weight_hr_l0 must have shape (proj_size, hidden_size), got ",
                    python_shape(weight_hr0.sizes()));
  // The state that recurs is proj_size wide with projections.
  const int64_t proj = projections ? weight_hr0.size(0) : 0;
  TORCH_CHECK_VALUE(params[0].dim() == 2 && params[1].dim() == 2 &&
                        (projections ? params[1].size(1) == proj && params[1].size(0) == spec.gates * weight_hr0.size(1)
                                     : params[1].size(0) == spec.gates * params[1].size(1)),
                    op, ": weight_ih_l0 must be 2-D and weight_hh_l0 of shape (", spec.gates, "*hidden_size, ",
                    projections ? "proj_size" : "hidden_size", "), got shapes ", python_shape(params[0].sizes()),
                    " and ", python_shape(params[1].sizes()));
  const int64_t input_size = params[0].size(1), hidden = projections ? weight_hr0.size(1) : params[1].size(1);
  const int64_t width = projections ? proj : hidden;
  const std::optional<Tensor>& batch_sizes = packing.batch_sizes;
  const bool packed = batch_sizes.has_value();
  if (packed) {
    TORCH_CHECK_VALUE(input.dim() == 2, op, ": a PackedSequence's data must be 2-D (sum of lengths, input_size), "
                      "got shape ", python_shape(input.sym_sizes()));
    // Its first entry (the batch) is read here; the layer operators check the rest.
    TORCH_CHECK_TYPE(batch_sizes->dim() == 1 && batch_sizes->scalar_type() == at::kLong && batch_sizes->is_cpu(),
                     op, ": batch_sizes must be a 1-D int64 CPU tensor (a PackedSequence's), got a ",
                     batch_sizes->dim(), "-D ", batch_sizes->scalar_type(), " tensor on ", batch_sizes->device());
    TORCH_CHECK_VALUE(batch_sizes->numel() > 0, op, ": expected a PackedSequence of at least one step, got "
                      "empty batch_sizes");
  } else {
    TORCH_CHECK_VALUE(input.dim() == 2 || input.dim() == 3, op,
                      ": expected input of shape (seq_len, input_size) unbatched or (seq_len, batch, input_size) (",
                      batch_first ? "batch, seq_len" : "seq_len, batch", " first), got a tensor of shape ",
                      python_shape(input.sym_sizes()), " of ", input.dim(), " dims");
  }
  // Sizes of the input and states as SymInts: under torch.export and
  // torch.compile with dynamic shapes, batch and time stay symbolic (a plain
  // size() would specialise them to the example's values).
  TORCH_CHECK_VALUE(input.sym_size(-1) == input_size, op, ": input.size(-1) must be equal to input_size. Expected ",
                    input_size, ", got ", input.sym_size(-1), " (weight_ih_l0 has shape ",
                    python_shape(params[0].sizes()), ")");
  check_parameters(op, input, params, has_biases, num_layers, directions, input_size, hidden, spec.gates, proj);
  const bool batched = packed || input.dim() == 3;
  const Tensor x = packed         ? input
                   : !batched     ? input.unsqueeze(1)
                   : batch_first  ? input.transpose(0, 1)
                                  : input;
  // As torch.nn: a sequence needs at least one step.
  TORCH_CHECK_VALUE(packed || x.sym_size(0) > 0, op,
                    ": expected sequence length to be larger than 0, got input of shape ",
                    python_shape(input.sym_sizes()));
  const c10::SymInt batch = packed ? c10::SymInt(batch_sizes->const_data_ptr<int64_t>()[0]) : x.sym_size(1);
  const int64_t layers_states = num_layers * directions;

  // initial[k][index]: state kind k (h, then c) of layer and direction index.
  std::vector<std::vector<Tensor>> initial(spec.states);
  if (hx.empty()) {
    // One zero state serves every layer, direction and kind (h and c alike
    // unless projections make h narrower).
    const Tensor zeros = at::zeros_symint({batch, hidden}, x.options());
    for (auto& kind : initial) kind.assign(layers_states, zeros);
    if (projections) initial[0].assign(layers_states, at::zeros_symint({batch, width}, x.options()));
  } else {
    TORCH_CHECK_TYPE(static_cast<int64_t>(hx.size()) == spec.states, op, ": hx must be ", spec.hx_description,
                     ", got ", hx.size(), " tensors");
    const char* names[] = {"h_0", "c_0"};
    for (int64_t k = 0; k < spec.states; ++k) {
      const int64_t size = k == 0 ? width : hidden;
      const std::vector<c10::SymInt> expected = batched ? std::vector<c10::SymInt>{layers_states, batch, size}
                                                        : std::vector<c10::SymInt>{layers_states, size};
      check_like(op, names[k], hx[k], "input", input);
      TORCH_CHECK_VALUE(hx[k].sym_sizes().equals(expected), op, ": expected ", names[k], " of shape ",
                        python_shape(c10::SymIntArrayRef(expected)), ", got a tensor of shape ",
                        python_shape(hx[k].sym_sizes()));
      initial[k] = (!batched                  ? hx[k].unsqueeze(1)
                    : packing.sorted_indices ? hx[k].index_select(1, *packing.sorted_indices)
                                             : hx[k])
                       .unbind(0);
    }
  }

  // Without a gradient to form (grad mode off, or no input, state or
  // parameter requiring grad), each layer runs its inference operator, which
  // keeps nothing for a backward.
  bool needs_grad = false;
  if (at::GradMode::is_enabled()) {
    needs_grad = input.requires_grad();
    for (const Tensor& t : hx) needs_grad = needs_grad || t.requires_grad();
    for (const Tensor& t : params) needs_grad = needs_grad || t.requires_grad();
  }
  // One layer and direction in plain eager mode: the layer's states can be
  // h_n and c_n themselves, [1, B, H] from its Autograd kernel called
  // directly, rather than their _unsafe_views, whose node cost ~14 us of a
  // forward+backward of h_n at the course's size (~6%).
  const bool leading_one =
      needs_grad && layers_states == 1 && batched && dispatches_to_autograd(input, hx, params);
  Tensor layer_input = x;
  std::vector<std::vector<Tensor>> final_states(spec.states);
  std::vector<Tensor> outputs;
  std::vector<Tensor> states(spec.states);
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    outputs.clear();
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t index = layer * directions + direction;
      const Tensor* p = &params[index * per_layer];
      const std::optional<Tensor> bias_ih = has_biases ? std::optional<Tensor>(p[2]) : std::nullopt;
      const std::optional<Tensor> bias_hh = has_biases ? std::optional<Tensor>(p[3]) : std::nullopt;
      const std::optional<Tensor> weight_hr = projections ? std::optional<Tensor>(p[plain]) : std::nullopt;
      for (int64_t k = 0; k < spec.states; ++k) states[k] = initial[k][index];
      auto [output, last] =
          run(layer_input, states, p, bias_ih, bias_hh, weight_hr, direction == 1, needs_grad, leading_one);
      outputs.push_back(std::move(output));
      for (int64_t k = 0; k < spec.states; ++k) final_states[k].push_back(std::move(last[k]));
    }
    layer_input = directions == 1 ? outputs[0] : at::cat(outputs, -1);
    if (dropout > 0 && train && layer < num_layers - 1) {
      layer_input = at::dropout(layer_input, dropout, /*train=*/true);
    }
  }
  std::vector<Tensor> stacked;
  for (const auto& kind : final_states) {
    // One layer and direction: its state with a leading 1, not as a view
    // (torch.nn's h_n and c_n are not views: h_n.detach_() works on them, and
    // FSDP2 warns of in-place ops on a view). Nothing else holds or saves
    // the operator's own h_n / c_n, so the alias is never seen.
    Tensor s = layers_states > 1    ? at::stack(kind)
               : kind[0].dim() == 3 ? kind[0]  // [1, B, H] already (leading_one)
                                    : at::_unsafe_view_symint(kind[0], prepend_one(kind[0].sym_sizes()));
    if (packing.unsorted_indices) s = s.index_select(1, *packing.unsorted_indices);
    stacked.push_back(batched ? s : s.squeeze(1));
  }
  if (packed) return {layer_input, stacked};
  if (!batched) return {layer_input.squeeze(1), stacked};
  return {batch_first ? layer_input.transpose(0, 1) : layer_input, stacked};
}

// lstm and lstm_packed.
std::tuple<Tensor, Tensor, Tensor> lstm_stack(const Tensor& input, at::TensorList hx, at::TensorList params,
                                              bool has_biases, int64_t num_layers, double dropout, bool train,
                                              bool bidirectional, bool batch_first, double zoneout_cell,
                                              double zoneout_hidden, const Packing& packing) {
  constexpr StackSpec spec{"lstm_ext.LSTM", 4, 2, "a pair (h_0, c_0)", /*projections=*/true};
  TORCH_CHECK_VALUE(zoneout_cell >= 0 && zoneout_cell <= 1 && zoneout_hidden >= 0 && zoneout_hidden <= 1, spec.op,
                    ": zoneout rates must be in [0, 1], got zoneout_cell=", zoneout_cell,
                    ", zoneout_hidden=", zoneout_hidden);
  const bool zoneout = zoneout_cell > 0 || zoneout_hidden > 0;
  // (A PackedSequence with zoneout runs lstm_ext.LSTM's Python stack.)
  const std::optional<Tensor>& batch_sizes = packing.batch_sizes;
  TORCH_CHECK_NOT_IMPLEMENTED(!zoneout || !batch_sizes, spec.op, ": zoneout with batch_sizes is not supported here");
  auto [output, states] = run_stack(
      spec, input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first, packing,
      [&](const Tensor& x, const std::vector<Tensor>& s, const Tensor* p, const std::optional<Tensor>& bias_ih,
          const std::optional<Tensor>& bias_hh, const std::optional<Tensor>& weight_hr, bool reverse,
          bool needs_grad, bool leading_one) {
        Tensor output, h, c;
        if (zoneout) {
          // Zoneout runs on the LayerNorm LSTM's operators without their layer
          // norms: on the CPU their forward is the LSTM's fused time loop
          // with the masks in its pointwise pass, their backward their own
          // row pass. They take b_hh apart from b_ih (a sum here would be a
          // graph node of its own: ~10 us of a forward+backward at the
          // course's size).
          TORCH_CHECK_NOT_IMPLEMENTED(!weight_hr, spec.op, ": zoneout with proj_size > 0 is not supported");
          // In training, the masks; their (T, B) are the layer input's, and
          // symbolic sizes are fixed there, as a mask's shape is an int[]
          // (in eval, d is the rate and batch and time stay symbolic).
          std::array<std::optional<Tensor>, 2> masks;
          if (train) {
            const std::vector<int64_t> size{x.sym_size(0).guard_int(__FILE__, __LINE__),
                                            x.sym_size(1).guard_int(__FILE__, __LINE__), p[1].size(1)};
            masks = zoneout_draws({zoneout_cell, zoneout_hidden}, x, size);
          }
          const auto& [mask_c, mask_h] = masks;
          if (needs_grad) {
            std::tie(output, h, c, std::ignore, std::ignore, std::ignore, std::ignore, std::ignore, std::ignore,
                     std::ignore) = ln_lstm_layer_forward_op().call(x, s[0], s[1], p[0], p[1], bias_ih, std::nullopt,
                                                                    std::nullopt, std::nullopt, std::nullopt, mask_c,
                                                                    mask_h, zoneout_cell, zoneout_hidden, reverse,
                                                                    std::nullopt, bias_hh);
          } else {
            std::tie(output, h, c) = ln_lstm_layer_inference_op().call(
                x, s[0], s[1], p[0], p[1], bias_ih, std::nullopt, std::nullopt, std::nullopt, std::nullopt, mask_c,
                mask_h, zoneout_cell, zoneout_hidden, reverse, std::nullopt, bias_hh);
          }
        } else if (leading_one) {
          std::tie(output, h, c, std::ignore, std::ignore) = layer_forward_graph(
              x, s[0], s[1], p[0], p[1], bias_ih, bias_hh, reverse, weight_hr, batch_sizes, /*leading_one=*/true);
        } else if (needs_grad) {
          std::tie(output, h, c, std::ignore, std::ignore) =
              layer_forward_op().call(x, s[0], s[1], p[0], p[1], bias_ih, bias_hh, reverse, weight_hr, batch_sizes);
        } else {
          std::tie(output, h, c) =
              layer_inference_op().call(x, s[0], s[1], p[0], p[1], bias_ih, bias_hh, reverse, weight_hr, batch_sizes);
        }
        return std::pair{output, std::vector<Tensor>{h, c}};
      });
  return {output, states[0], states[1]};
}

// gru and gru_packed.
std::tuple<Tensor, Tensor> gru_stack(const Tensor& input, at::TensorList hx, at::TensorList params, bool has_biases,
                                     int64_t num_layers, double dropout, bool train, bool bidirectional,
                                     bool batch_first, const Packing& packing) {
  constexpr StackSpec spec{"lstm_ext.GRU", 3, 1, "empty or one tensor (h_0)", /*projections=*/false};
  const std::optional<Tensor>& batch_sizes = packing.batch_sizes;
  auto [output, states] = run_stack(
      spec, input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first, packing,
      [&](const Tensor& x, const std::vector<Tensor>& s, const Tensor* p, const std::optional<Tensor>& bias_ih,
         const std::optional<Tensor>& bias_hh, const std::optional<Tensor>&, bool reverse, bool needs_grad,
         bool leading_one) {
        Tensor output, h;
        if (leading_one) {
          std::tie(output, h, std::ignore, std::ignore) = gru_layer_forward_graph(
              x, s[0], p[0], p[1], bias_ih, bias_hh, reverse, batch_sizes, /*leading_one=*/true);
        } else if (needs_grad) {
          std::tie(output, h, std::ignore, std::ignore) =
              gru_layer_forward_op().call(x, s[0], p[0], p[1], bias_ih, bias_hh, reverse, batch_sizes);
        } else {
          std::tie(output, h) =
              gru_layer_inference_op().call(x, s[0], p[0], p[1], bias_ih, bias_hh, reverse, batch_sizes);
        }
        return std::pair{output, std::vector<Tensor>{h}};
      });
  return {output, states[0]};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> lstm(const Tensor& input, at::TensorList hx, at::TensorList params,
                                        bool has_biases, int64_t num_layers, double dropout, bool train,
                                        bool bidirectional, bool batch_first, double zoneout_cell,
                                        double zoneout_hidden) {
  return lstm_stack(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first,
                    zoneout_cell, zoneout_hidden, Packing{});
}

std::tuple<Tensor, Tensor, Tensor> lstm_packed(const Tensor& data, const Tensor& batch_sizes,
                                               const std::optional<Tensor>& sorted_indices,
                                               const std::optional<Tensor>& unsorted_indices, at::TensorList hx,
                                               at::TensorList params, bool has_biases, int64_t num_layers,
                                               double dropout, bool train, bool bidirectional) {
  return lstm_stack(data, hx, params, has_biases, num_layers, dropout, train, bidirectional, false, 0.0, 0.0,
                    Packing{batch_sizes, sorted_indices, unsorted_indices});
}

std::tuple<Tensor, Tensor> gru(const Tensor& input, at::TensorList hx, at::TensorList params, bool has_biases,
                               int64_t num_layers, double dropout, bool train, bool bidirectional, bool batch_first) {
  return gru_stack(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first,
                   Packing{});
}

std::tuple<Tensor, Tensor> gru_packed(const Tensor& data, const Tensor& batch_sizes,
                                      const std::optional<Tensor>& sorted_indices,
                                      const std::optional<Tensor>& unsorted_indices, at::TensorList hx,
                                      at::TensorList params, bool has_biases, int64_t num_layers, double dropout,
                                      bool train, bool bidirectional) {
  return gru_stack(data, hx, params, has_biases, num_layers, dropout, train, bidirectional, false,
                   Packing{batch_sizes, sorted_indices, unsorted_indices});
}

}  // namespace lstm_ext
