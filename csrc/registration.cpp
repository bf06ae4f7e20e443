// The one place where operators get their schemas and their kernels, plus the
// tiny Python module lstm_ext._C: what the build has, and direct bindings of
// the forward operators for eager calls.
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <vector>

#include "buffer_pool.h"
#include "lstm_checks.h"
#include "lstm_kernels.h"
#include "layernorm_lstm_ops.h"
#include "lstm_ops.h"
#include "sequence_packing.h"

// The LayerNorm LSTM layer operators' arguments (layernorm_lstm_ops.h).
#define LSTM_EXT_LN_LAYER_ARGS                                                                           \
  "Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, Tensor weight_hh, Tensor? bias, "                \
  "Tensor? ln_ih_weight, Tensor? ln_hh_weight, Tensor? ln_c_weight, Tensor? ln_c_bias, "                  \
  "Tensor? zoneout_cell_mask, Tensor? zoneout_hidden_mask, float zoneout_cell, float zoneout_hidden, bool " \
  "reverse, Tensor? batch_sizes=None, Tensor? bias_hh=None"

TORCH_LIBRARY(lstm_ext, m) {
  m.def(
      "cell_forward(Tensor input, Tensor hx, Tensor cx, Tensor weight, Tensor? bias) "
      "-> (Tensor h, Tensor c, Tensor gates, Tensor input_hidden)");
  m.def(
      "cell_backward(Tensor grad_h, Tensor grad_c, Tensor cx, Tensor c, Tensor gates, "
      "Tensor input_hidden, Tensor weight) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "layer_forward(Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, bool reverse, Tensor? weight_hr=None, Tensor? batch_sizes=None) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def(
      "layer_inference(Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, bool reverse, Tensor? weight_hr=None, Tensor? batch_sizes=None) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "layer_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor input, Tensor h0, "
      "Tensor c0, Tensor weight_ih, Tensor weight_hh, Tensor output, Tensor gates, Tensor cells, bool reverse, "
      "bool[4] output_mask, Tensor? weight_hr=None, Tensor? batch_sizes=None) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_weight_ih, Tensor grad_weight_hh, "
      "Tensor grad_bias, Tensor grad_weight_hr)");
  m.def(
      "lstm(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, float dropout, "
      "bool train, bool bidirectional, bool batch_first, float zoneout_cell=0., float zoneout_hidden=0.) "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "gru_layer_forward(Tensor input, Tensor h0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, bool reverse, Tensor? batch_sizes=None) "
      "-> (Tensor output, Tensor h_n, Tensor gates, Tensor hidden_n)");
  m.def(
      "gru_layer_inference(Tensor input, Tensor h0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, bool reverse, Tensor? batch_sizes=None) -> (Tensor output, Tensor h_n)");
  m.def(
      "gru_layer_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor input, Tensor h0, Tensor weight_ih, "
      "Tensor weight_hh, Tensor output, Tensor gates, Tensor hidden_n, bool reverse, bool[3] output_mask, "
      "Tensor? batch_sizes=None) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_weight_ih, Tensor grad_weight_hh, "
      "Tensor grad_bias_ih, Tensor grad_bias_hh)");
  m.def(
      "gru(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, float dropout, "
      "bool train, bool bidirectional, bool batch_first) -> (Tensor output, Tensor h_n)");
  m.def(
      "ln_lstm_layer_forward(" LSTM_EXT_LN_LAYER_ARGS ") "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells, Tensor ih, Tensor ih_mean, "
      "Tensor ih_rstd, Tensor hh_norm, Tensor stats)");
  m.def(
      "ln_lstm_layer_inference(" LSTM_EXT_LN_LAYER_ARGS ") "
      "-> (Tensor output, Tensor h_n, Tensor c_n)");
  m.def(
      "ln_lstm_layer_backward(Tensor grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor input, Tensor h0, "
      "Tensor c0, Tensor weight_ih, Tensor weight_hh, bool has_bias, Tensor? ln_ih_weight, Tensor? ln_hh_weight, "
      "Tensor? ln_c_weight, Tensor? ln_c_bias, Tensor? zoneout_cell_mask, Tensor? zoneout_hidden_mask, "
      "float zoneout_cell, float zoneout_hidden, bool reverse, Tensor output, Tensor gates, Tensor cells, "
      "Tensor ih, Tensor ih_mean, Tensor ih_rstd, Tensor hh_norm, Tensor stats, Tensor? batch_sizes=None) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_weight_ih, Tensor grad_weight_hh, "
      "Tensor grad_bias, Tensor grad_ln_ih_weight, Tensor grad_ln_hh_weight, Tensor grad_ln_c_weight, "
      "Tensor grad_ln_c_bias)");
  m.def("zoneout_mask(Tensor like, Tensor seed, int[] size, float rate) -> Tensor");
}

TORCH_LIBRARY_IMPL(lstm_ext, CompositeImplicitAutograd, m) {
  m.impl("lstm", &lstm_ext::lstm);
  m.impl("gru", &lstm_ext::gru);
}

// The same kernels serve CPU and CUDA tensors (lstm_ops.cpp picks the backend).
#define LSTM_EXT_DEVICE_KERNELS(M)                                   \
  M.impl("cell_forward", &lstm_ext::cell_forward);                   \
  M.impl("cell_backward", &lstm_ext::cell_backward);                 \
  M.impl("layer_forward", &lstm_ext::layer_forward);                 \
  M.impl("layer_inference", &lstm_ext::layer_inference);             \
  M.impl("layer_backward", &lstm_ext::layer_backward);               \
  M.impl("gru_layer_forward", &lstm_ext::gru_layer_forward);         \
  M.impl("gru_layer_inference", &lstm_ext::gru_layer_inference);     \
  M.impl("gru_layer_backward", &lstm_ext::gru_layer_backward);

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  LSTM_EXT_DEVICE_KERNELS(m)
  // The LayerNorm LSTM on the CPU and CUDA (below); other devices run
  // lstm_ext.LayerNormLSTM's composite of torch ops. Zoneout's masks are
  // drawn here on the CPU, by bernoulli_ elsewhere.
  m.impl("ln_lstm_layer_forward", &lstm_ext::ln_lstm_layer_forward);
  m.impl("ln_lstm_layer_inference", &lstm_ext::ln_lstm_layer_inference);
  m.impl("ln_lstm_layer_backward", &lstm_ext::ln_lstm_layer_backward);
  m.impl("zoneout_mask", &lstm_ext::zoneout_mask);
}

TORCH_LIBRARY_IMPL(lstm_ext, Autograd, m) {
  m.impl("cell_forward", &lstm_ext::cell_forward_autograd);
  m.impl("layer_forward", &lstm_ext::layer_forward_autograd);
  m.impl("layer_inference", &lstm_ext::layer_inference_autograd);
  m.impl("gru_layer_forward", &lstm_ext::gru_layer_forward_autograd);
  m.impl("gru_layer_inference", &lstm_ext::gru_layer_inference_autograd);
  m.impl("ln_lstm_layer_forward", &lstm_ext::ln_lstm_layer_forward_autograd);
  m.impl("ln_lstm_layer_inference", &lstm_ext::ln_lstm_layer_inference_autograd);
  // Zoneout's masks are draws, not a function of `like` (its dtype and device only).
  m.impl("zoneout_mask", torch::CppFunction::makeFallthrough());
}

namespace {

// Autocast, as ATen's for torch.nn.LSTM (lower_precision_fp on the CPU, fp16
// on CUDA): every floating point tensor argument of the autocast device's
// type, float64 excepted, is cast to autocast's dtype (through autocast's
// cast cache, differentiably: gradients reach the float32 weights), then the
// operator runs again below the Autocast key.
template <c10::DeviceType device>
void autocast_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device);
  const size_t count = op.schema().arguments().size();
  for (auto arg = stack->end() - static_cast<std::ptrdiff_t>(count); arg != stack->end(); ++arg) {
    if (arg->isTensor()) {
      *arg = at::autocast::cached_cast(dtype, arg->toTensor(), device);
    } else if (arg->isTensorList()) {
      c10::List<at::Tensor> cast;
      for (const at::Tensor& t : arg->toTensorList()) cast.push_back(at::autocast::cached_cast(dtype, t, device));
      *arg = std::move(cast);
    }
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device));
  op.callBoxed(stack);
}

// Quantized, sparse and mkldnn tensors reach these kernels instead of a
// dispatcher error that names no argument.
void unsupported_tensor_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const auto first = stack->end() - static_cast<std::ptrdiff_t>(arguments.size());
  for (size_t k = 0; k < arguments.size(); ++k) {
    const c10::IValue& arg = *(first + static_cast<std::ptrdiff_t>(k));
    if (arg.isTensor() && arguments[k].name() != "batch_sizes") {
      lstm_ext::check_floating(op.schema().name().c_str(), arguments[k].name().c_str(), arg.toTensor());
    }
  }
  TORCH_CHECK_TYPE(false, op.schema().name(), ": expected dense floating point tensors");
}

}  // namespace

#define LSTM_EXT_FOR_EACH_OPERATOR(M, KERNEL) \
  M.impl("cell_forward", KERNEL);            \
  M.impl("cell_backward", KERNEL);           \
  M.impl("layer_forward", KERNEL);           \
  M.impl("layer_inference", KERNEL);         \
  M.impl("layer_backward", KERNEL);          \
  M.impl("gru_layer_forward", KERNEL);       \
  M.impl("gru_layer_inference", KERNEL);     \
  M.impl("gru_layer_backward", KERNEL);      \
  M.impl("ln_lstm_layer_forward", KERNEL);   \
  M.impl("ln_lstm_layer_inference", KERNEL); \
  M.impl("ln_lstm_layer_backward", KERNEL);

#define LSTM_EXT_AUTOCAST(KEY, DEVICE)                                                                 \
  TORCH_LIBRARY_IMPL(lstm_ext, KEY, m) {                                                                \
    LSTM_EXT_FOR_EACH_OPERATOR(m, torch::CppFunction::makeFromBoxedFunction<&autocast_kernel<DEVICE>>()) \
    m.impl("lstm", torch::CppFunction::makeFromBoxedFunction<&autocast_kernel<DEVICE>>());              \
    m.impl("gru", torch::CppFunction::makeFromBoxedFunction<&autocast_kernel<DEVICE>>());               \
  }
LSTM_EXT_AUTOCAST(AutocastCPU, c10::DeviceType::CPU)
LSTM_EXT_AUTOCAST(AutocastCUDA, c10::DeviceType::CUDA)
#undef LSTM_EXT_AUTOCAST

#define LSTM_EXT_UNSUPPORTED_TENSORS(KEY)                                                        \
  TORCH_LIBRARY_IMPL(lstm_ext, KEY, m) {                                                          \
    LSTM_EXT_FOR_EACH_OPERATOR(m, torch::CppFunction::makeFromBoxedFunction<&unsupported_tensor_kernel>()) \
  }
LSTM_EXT_UNSUPPORTED_TENSORS(QuantizedCPU)
LSTM_EXT_UNSUPPORTED_TENSORS(SparseCPU)
LSTM_EXT_UNSUPPORTED_TENSORS(SparseCsrCPU)
LSTM_EXT_UNSUPPORTED_TENSORS(MkldnnCPU)
LSTM_EXT_UNSUPPORTED_TENSORS(QuantizedCUDA)
LSTM_EXT_UNSUPPORTED_TENSORS(SparseCUDA)
LSTM_EXT_UNSUPPORTED_TENSORS(SparseCsrCUDA)
#undef LSTM_EXT_UNSUPPORTED_TENSORS

#ifdef LSTM_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(lstm_ext, CUDA, m) {
  LSTM_EXT_DEVICE_KERNELS(m)
  m.impl("ln_lstm_layer_forward", &lstm_ext::ln_lstm_layer_forward);
  m.impl("ln_lstm_layer_inference", &lstm_ext::ln_lstm_layer_inference);
  m.impl("ln_lstm_layer_backward", &lstm_ext::ln_lstm_layer_backward);
}
#endif
#undef LSTM_EXT_DEVICE_KERNELS

namespace {

PyObject* cpu_capability(PyObject*, PyObject*) {
  return PyUnicode_FromString(lstm_ext::cpu::kernel_capability());
}

PyObject* set_cpu_capability(PyObject*, PyObject* arg) {
  if (!PyUnicode_Check(arg)) {
    PyErr_Format(PyExc_TypeError, "lstm_ext.set_cpu_capability: name must be a str ('DEFAULT', 'AVX2' or "
                 "'AVX512'; compiled: %s), got %s", lstm_ext::cpu::compiled_capabilities(), Py_TYPE(arg)->tp_name);
    return nullptr;
  }
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  if (!lstm_ext::cpu::set_kernel_capability(name)) {
    PyErr_Format(PyExc_ValueError,
                 "lstm_ext: CPU capability '%s' is not available here (compiled: %s; "
                 "this CPU supports up to torch's choice, torch.backends.cpu.get_cpu_capability())",
                 name, lstm_ext::cpu::compiled_capabilities());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* compiled_cpu_capabilities(PyObject*, PyObject*) {
  return PyUnicode_FromString(lstm_ext::cpu::compiled_capabilities());
}

PyObject* set_cpu_specialized(PyObject*, PyObject* arg) {
  const int enabled = PyObject_IsTrue(arg);
  if (enabled < 0) return nullptr;
  return PyBool_FromLong(lstm_ext::set_cpu_specialized(enabled != 0));
}

PyObject* empty_cache(PyObject*, PyObject*) { return PyLong_FromSize_t(lstm_ext::pool_release_cached()); }

PyObject* cached_bytes(PyObject*, PyObject*) { return PyLong_FromSize_t(lstm_ext::pool_cached_bytes()); }

PyObject* pool_limit_bytes(PyObject*, PyObject*) { return PyLong_FromSize_t(lstm_ext::pool_limit_bytes()); }

PyObject* with_cuda(PyObject*, PyObject*) {
#ifdef LSTM_EXT_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// torch.ops.lstm_ext.*(...) parses its arguments against the schema in
// Python and C++, ~10-25 us per call on this machine's CPU (more than the
// operators at the course's size); torch.nn.LSTM avoids that with a direct
// binding (_VF.lstm), and so do these: the same operators, through the same
// dispatcher (autograd, profiler, dispatch modes), with the arguments
// converted by hand. The modules and functions use them outside
// torch.compile and __torch_function__ overrides, which take torch.ops.

const at::Tensor& tensor_arg(PyObject* obj, const char* op, const char* name) {
  TORCH_CHECK_TYPE(THPVariable_Check(obj), op, ": ", name, " must be a Tensor, got ", Py_TYPE(obj)->tp_name);
  return THPVariable_Unpack(obj);
}

std::optional<at::Tensor> optional_tensor_arg(PyObject* obj, const char* op, const char* name) {
  if (obj == Py_None) return std::nullopt;
  return tensor_arg(obj, op, name);
}

std::vector<at::Tensor> tensor_list_arg(PyObject* obj, const char* op, const char* name) {
  std::vector<at::Tensor> tensors;
  if (obj == Py_None) return tensors;
  TORCH_CHECK_TYPE(PyTuple_Check(obj) || PyList_Check(obj), op, ": ", name,
                   " must be a tuple or list of tensors, got ", Py_TYPE(obj)->tp_name);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
  PyObject** items = PySequence_Fast_ITEMS(obj);
  tensors.reserve(n);
  for (Py_ssize_t k = 0; k < n; ++k) tensors.push_back(tensor_arg(items[k], op, name));
  return tensors;
}

bool bool_arg(PyObject* obj) {
  const int value = PyObject_IsTrue(obj);
  if (value < 0) throw python_error();
  return value != 0;
}

void check_nargs(Py_ssize_t nargs, Py_ssize_t expected, const char* binding) {
  TORCH_CHECK_TYPE(nargs == expected, "lstm_ext._C.", binding, " takes ", expected, " arguments, got ", nargs);
}

// Runs fn with the GIL released (as torch's own bindings do).
template <typename Fn>
auto without_gil(const Fn& fn) {
  struct Released {
    PyThreadState* state = PyEval_SaveThread();
    ~Released() { PyEval_RestoreThread(state); }
  } released;
  return fn();
}

// A new reference to the tensor, or to None where it is undefined.
PyObject* tensor_or_none(at::Tensor t) {
  if (!t.defined()) Py_RETURN_NONE;
  return THPVariable_Wrap(std::move(t));
}

// (output, (h_n, c_n)), as torch.nn.LSTM returns them.
PyObject* output_and_state(at::Tensor output, at::Tensor h_n, at::Tensor c_n) {
  return Py_BuildValue("(N(NN))", THPVariable_Wrap(std::move(output)), THPVariable_Wrap(std::move(h_n)),
                       THPVariable_Wrap(std::move(c_n)));
}

// The arguments of lstm and gru after hx: (params, has_biases, num_layers,
// dropout, train, bidirectional, batch_first), converted.
struct StackArgs {
  std::vector<at::Tensor> params;
  bool has_biases, train, bidirectional, batch_first;
  int64_t num_layers;
  double dropout;

  StackArgs(PyObject* const* args, const char* name)
      : params(tensor_list_arg(args[0], name, "params")), has_biases(bool_arg(args[1])) {
    num_layers = PyLong_AsLongLong(args[2]);
    dropout = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred()) throw python_error();
    train = bool_arg(args[4]);
    bidirectional = bool_arg(args[5]);
    batch_first = bool_arg(args[6]);
  }

  // op(input, hx, these arguments, then extra), the GIL released.
  template <typename Op, typename... Extra>
  auto call(const Op& op, const at::Tensor& input, const std::vector<at::Tensor>& hx, Extra... extra) const {
    return without_gil([&] {
      return op.call(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first,
                     extra...);
    });
  }
};

// lstm(input, hx or None, params, has_biases, num_layers, dropout, train,
// bidirectional, batch_first[, zoneout_cell, zoneout_hidden]) -> (output, (h_n, c_n))
PyObject* lstm_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  constexpr const char* name = "lstm_ext.LSTM";
  TORCH_CHECK_TYPE(nargs == 9 || nargs == 11, "lstm_ext._C.lstm takes 9 or 11 arguments, got ", nargs);
  const at::Tensor& input = tensor_arg(args[0], name, "input");
  const std::vector<at::Tensor> hx = tensor_list_arg(args[1], name, "hx");
  const StackArgs stack(args + 2, name);
  double zoneout_cell = 0.0, zoneout_hidden = 0.0;
  if (nargs == 11) {
    zoneout_cell = PyFloat_AsDouble(args[9]);
    zoneout_hidden = PyFloat_AsDouble(args[10]);
    if (PyErr_Occurred()) throw python_error();
  }
  auto [output, h_n, c_n] = stack.call(lstm_ext::lstm_op(), input, hx, zoneout_cell, zoneout_hidden);
  return output_and_state(std::move(output), std::move(h_n), std::move(c_n));
  END_HANDLE_TH_ERRORS
}

// lstm_packed(data, batch_sizes, sorted_indices or None, unsorted_indices or
// None, hx or None, params, has_biases, num_layers, dropout, train,
// bidirectional, batch_first) and gru_packed (the same, hx None or a tuple
// (h_0,)): lstm_ext.LSTM's and GRU's PackedSequence forwards, -> (output
// data, (h_n, c_n)) or (output data, h_n). batch_first is taken (the
// arguments of lstm and gru) and does not apply.
PyObject* packed_binding(PyObject* const* args, Py_ssize_t nargs, bool gru) {
  const char* name = gru ? "lstm_ext.GRU" : "lstm_ext.LSTM";
  check_nargs(nargs, 12, gru ? "gru_packed" : "lstm_packed");
  const at::Tensor& data = tensor_arg(args[0], name, "input");
  const at::Tensor& batch_sizes = tensor_arg(args[1], name, "batch_sizes");
  const auto sorted_indices = optional_tensor_arg(args[2], name, "sorted_indices");
  const auto unsorted_indices = optional_tensor_arg(args[3], name, "unsorted_indices");
  const std::vector<at::Tensor> hx = tensor_list_arg(args[4], name, "hx");
  const StackArgs stack(args + 5, name);
  if (gru) {
    auto [output, h_n] = without_gil([&] {
      return lstm_ext::gru_packed(data, batch_sizes, sorted_indices, unsorted_indices, hx, stack.params,
                                  stack.has_biases, stack.num_layers, stack.dropout, stack.train, stack.bidirectional);
    });
    return Py_BuildValue("(NN)", THPVariable_Wrap(std::move(output)), THPVariable_Wrap(std::move(h_n)));
  }
  auto [output, h_n, c_n] = without_gil([&] {
    return lstm_ext::lstm_packed(data, batch_sizes, sorted_indices, unsorted_indices, hx, stack.params,
                                 stack.has_biases, stack.num_layers, stack.dropout, stack.train, stack.bidirectional);
  });
  return output_and_state(std::move(output), std::move(h_n), std::move(c_n));
}

PyObject* lstm_packed_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  return packed_binding(args, nargs, /*gru=*/false);
  END_HANDLE_TH_ERRORS
}

PyObject* gru_packed_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  return packed_binding(args, nargs, /*gru=*/true);
  END_HANDLE_TH_ERRORS
}

// The tensors an LSTM layer binding starts with: input, h_0, c_0, weight_ih,
// weight_hh (named so in messages).
std::array<const at::Tensor*, 5> lstm_layer_operands(PyObject* const* args, const char* op) {
  static constexpr const char* names[] = {"input", "h_0", "c_0", "weight_ih", "weight_hh"};
  std::array<const at::Tensor*, 5> operands;
  for (int k = 0; k < 5; ++k) operands[k] = &tensor_arg(args[k], op, names[k]);
  return operands;
}

// layer_forward(input, h0, c0, weight_ih, weight_hh, bias_ih or None,
// bias_hh or None, reverse, weight_hr or None, batch_sizes or None) -> (output, (h_n, c_n)); layer_inference when
// nothing needs a gradient, which keeps nothing for a backward.
PyObject* layer_forward_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  constexpr const char* name = "lstm_ext.lstm_layer";
  check_nargs(nargs, 10, "layer_forward");
  const auto t = lstm_layer_operands(args, name);
  const auto bias_ih = optional_tensor_arg(args[5], name, "bias_ih");
  const auto bias_hh = optional_tensor_arg(args[6], name, "bias_hh");
  const bool reverse = bool_arg(args[7]);
  const auto weight_hr = optional_tensor_arg(args[8], name, "weight_hr");
  const auto batch_sizes = optional_tensor_arg(args[9], name, "batch_sizes");
  if (!lstm_ext::needs_graph(name, {t[0], t[1], t[2], t[3], t[4]}, {&bias_ih, &bias_hh, &weight_hr})) {
    auto [output, h_n, c_n] = without_gil([&] {
      return lstm_ext::layer_inference_op().call(*t[0], *t[1], *t[2], *t[3], *t[4], bias_ih, bias_hh, reverse,
                                                 weight_hr, batch_sizes);
    });
    return output_and_state(std::move(output), std::move(h_n), std::move(c_n));
  }
  auto [output, h_n, c_n, gates, cells] = without_gil([&] {
    return lstm_ext::layer_forward_op().call(*t[0], *t[1], *t[2], *t[3], *t[4], bias_ih, bias_hh, reverse,
                                             weight_hr, batch_sizes);
  });
  return output_and_state(std::move(output), std::move(h_n), std::move(c_n));
  END_HANDLE_TH_ERRORS
}

// gru(input, h_0 or None, params, has_biases, num_layers, dropout, train,
// bidirectional, batch_first) -> (output, h_n)
PyObject* gru_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  constexpr const char* name = "lstm_ext.GRU";
  check_nargs(nargs, 9, "gru");
  const at::Tensor& input = tensor_arg(args[0], name, "input");
  std::vector<at::Tensor> hx;
  if (args[1] != Py_None) hx.push_back(tensor_arg(args[1], name, "hx"));
  auto [output, h_n] = StackArgs(args + 2, name).call(lstm_ext::gru_op(), input, hx);
  return Py_BuildValue("(NN)", THPVariable_Wrap(std::move(output)), THPVariable_Wrap(std::move(h_n)));
  END_HANDLE_TH_ERRORS
}

// gru_layer_forward(input, h0, weight_ih, weight_hh, bias_ih or None, bias_hh
// or None, reverse, batch_sizes or None) -> (output, h_n); gru_layer_inference when nothing needs
// a gradient.
PyObject* gru_layer_forward_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  constexpr const char* name = "lstm_ext.gru_layer";
  check_nargs(nargs, 8, "gru_layer_forward");
  const char* names[] = {"input", "h_0", "weight_ih", "weight_hh"};
  const at::Tensor* t[4];
  for (int k = 0; k < 4; ++k) t[k] = &tensor_arg(args[k], name, names[k]);
  const auto bias_ih = optional_tensor_arg(args[4], name, "bias_ih");
  const auto bias_hh = optional_tensor_arg(args[5], name, "bias_hh");
  const bool reverse = bool_arg(args[6]);
  const auto batch_sizes = optional_tensor_arg(args[7], name, "batch_sizes");
  at::Tensor output, h_n;
  if (!lstm_ext::needs_graph(name, {t[0], t[1], t[2], t[3]}, {&bias_ih, &bias_hh})) {
    std::tie(output, h_n) = without_gil([&] {
      return lstm_ext::gru_layer_inference_op().call(*t[0], *t[1], *t[2], *t[3], bias_ih, bias_hh, reverse,
                                                     batch_sizes);
    });
  } else {
    std::tie(output, h_n, std::ignore, std::ignore) = without_gil([&] {
      return lstm_ext::gru_layer_forward_op().call(*t[0], *t[1], *t[2], *t[3], bias_ih, bias_hh, reverse,
                                                   batch_sizes);
    });
  }
  return Py_BuildValue("(NN)", THPVariable_Wrap(std::move(output)), THPVariable_Wrap(std::move(h_n)));
  END_HANDLE_TH_ERRORS
}

// ln_layer_forward(input, h0, c0, weight_ih, weight_hh, bias, ln_ih_weight,
// ln_hh_weight, ln_c_weight, ln_c_bias, zoneout_cell_mask,
// zoneout_hidden_mask (each a Tensor or None after weight_hh), zoneout_cell,
// zoneout_hidden, reverse, batch_sizes or None) -> (output, (h_n, c_n));
// ln_lstm_layer_inference when nothing needs a gradient.
PyObject* ln_layer_forward_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  constexpr const char* name = "lstm_ext.layer_norm_lstm_layer";
  check_nargs(nargs, 16, "ln_layer_forward");
  const auto t = lstm_layer_operands(args, name);
  const char* optional_names[] = {"bias", "ln_ih_weight", "ln_hh_weight", "ln_c_weight", "ln_c_bias",
                                  "zoneout_cell_mask", "zoneout_hidden_mask"};
  std::optional<at::Tensor> o[7];
  for (int k = 0; k < 7; ++k) o[k] = optional_tensor_arg(args[5 + k], name, optional_names[k]);
  const double rate_c = PyFloat_AsDouble(args[12]), rate_h = PyFloat_AsDouble(args[13]);
  if (PyErr_Occurred()) throw python_error();
  const bool reverse = bool_arg(args[14]);
  const auto batch_sizes = optional_tensor_arg(args[15], name, "batch_sizes");
  at::Tensor output, h_n, c_n;
  if (!lstm_ext::needs_graph(name, {t[0], t[1], t[2], t[3], t[4]}, {&o[0], &o[1], &o[2], &o[3], &o[4]})) {
    std::tie(output, h_n, c_n) = without_gil([&] {
      return lstm_ext::ln_lstm_layer_inference_op().call(*t[0], *t[1], *t[2], *t[3], *t[4], o[0], o[1], o[2], o[3],
                                                         o[4], o[5], o[6], rate_c, rate_h, reverse, batch_sizes,
                                                         std::nullopt);
    });
  } else {
    std::tie(output, h_n, c_n, std::ignore, std::ignore, std::ignore, std::ignore, std::ignore, std::ignore,
             std::ignore) = without_gil([&] {
      return lstm_ext::ln_lstm_layer_forward_op().call(*t[0], *t[1], *t[2], *t[3], *t[4], o[0], o[1], o[2], o[3],
                                                       o[4], o[5], o[6], rate_c, rate_h, reverse, batch_sizes,
                                                       std::nullopt);
    });
  }
  return output_and_state(std::move(output), std::move(h_n), std::move(c_n));
  END_HANDLE_TH_ERRORS
}

// zoneout_masks(like, size, rate_c, rate_h) -> (mask_c or None, mask_h or
// None): one layer and direction's masks in training, drawn as the lstm
// operator draws them (lstm_ext.reference.zoneout_masks' numbers).
PyObject* zoneout_masks_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_nargs(nargs, 4, "zoneout_masks");
  const at::Tensor& like = tensor_arg(args[0], "lstm_ext.zoneout_masks", "like");
  std::vector<int64_t> size;
  PyObject* sequence = PySequence_Fast(args[1], "lstm_ext._C.zoneout_masks: size must be a sequence of ints");
  if (sequence == nullptr) throw python_error();
  for (Py_ssize_t k = 0; k < PySequence_Fast_GET_SIZE(sequence); ++k) {
    size.push_back(PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sequence, k)));
  }
  Py_DECREF(sequence);
  const double rate_c = PyFloat_AsDouble(args[2]), rate_h = PyFloat_AsDouble(args[3]);
  if (PyErr_Occurred()) throw python_error();
  const auto masks = without_gil([&] { return lstm_ext::zoneout_draws({rate_c, rate_h}, like, size); });
  return Py_BuildValue("(NN)", tensor_or_none(masks[0].value_or(at::Tensor())),
                       tensor_or_none(masks[1].value_or(at::Tensor())));
  END_HANDLE_TH_ERRORS
}

// cell_forward(input, h_prev, c_prev, weight, bias or None) -> (h, c)
PyObject* cell_forward_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const auto& op = lstm_ext::cell_forward_op();
  constexpr const char* name = "lstm_ext.lstm_cell";
  check_nargs(nargs, 5, "cell_forward");
  const at::Tensor& input = tensor_arg(args[0], name, "input");
  const at::Tensor& hx = tensor_arg(args[1], name, "h_prev");
  const at::Tensor& cx = tensor_arg(args[2], name, "c_prev");
  const at::Tensor& weight = tensor_arg(args[3], name, "weight");
  const auto bias = optional_tensor_arg(args[4], name, "bias");
  auto [h, c, gates, input_hidden] = without_gil([&] { return op.call(input, hx, cx, weight, bias); });
  return Py_BuildValue("(NN)", THPVariable_Wrap(std::move(h)), THPVariable_Wrap(std::move(c)));
  END_HANDLE_TH_ERRORS
}

// pack_padded(input, lengths, batch_first, enforce_sorted) -> (data,
// batch_sizes, sorted_indices or None, unsorted_indices or None), or None
// where torch's pack_padded_sequence should run (and raise).
PyObject* pack_padded_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  constexpr const char* name = "lstm_ext.pack_padded_sequence";
  check_nargs(nargs, 4, "pack_padded");
  const at::Tensor& input = tensor_arg(args[0], name, "input");
  const at::Tensor& lengths = tensor_arg(args[1], name, "lengths");
  const bool batch_first = bool_arg(args[2]), enforce_sorted = bool_arg(args[3]);
  auto packed = without_gil([&] { return lstm_ext::pack_padded_rows(input, lengths, batch_first, enforce_sorted); });
  if (!packed) Py_RETURN_NONE;
  auto& [data, batch_sizes, sorted_indices, unsorted_indices] = *packed;
  return Py_BuildValue("(NNNN)", THPVariable_Wrap(std::move(data)), THPVariable_Wrap(std::move(batch_sizes)),
                       tensor_or_none(std::move(sorted_indices)), tensor_or_none(std::move(unsorted_indices)));
  END_HANDLE_TH_ERRORS
}

// pad_packed(data, batch_sizes, unsorted_indices or None, batch_first,
// padding_value, total_length or None) -> (padded, lengths), or None where
// torch's pad_packed_sequence should run.
PyObject* pad_packed_binding(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  constexpr const char* name = "lstm_ext.pad_packed_sequence";
  check_nargs(nargs, 6, "pad_packed");
  const at::Tensor& data = tensor_arg(args[0], name, "data");
  const at::Tensor& batch_sizes = tensor_arg(args[1], name, "batch_sizes");
  const at::Tensor unsorted_indices = optional_tensor_arg(args[2], name, "unsorted_indices").value_or(at::Tensor());
  const bool batch_first = bool_arg(args[3]);
  const double padding_value = PyFloat_AsDouble(args[4]);
  const int64_t total_length = args[5] == Py_None ? -1 : PyLong_AsLongLong(args[5]);
  if (PyErr_Occurred()) throw python_error();
  auto padded = without_gil([&] {
    return lstm_ext::pad_packed_rows(data, batch_sizes, unsorted_indices, batch_first, padding_value, total_length);
  });
  if (!padded) Py_RETURN_NONE;
  auto& [output, lengths] = *padded;
  return Py_BuildValue("(NN)", THPVariable_Wrap(std::move(output)), THPVariable_Wrap(std::move(lengths)));
  END_HANDLE_TH_ERRORS
}

PyMethodDef kMethods[] = {
    {"lstm", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(lstm_binding)), METH_FASTCALL,
     "torch.ops.lstm_ext.lstm without the argument parsing of torch.ops; returns (output, (h_n, c_n))."},
    {"lstm_packed", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(lstm_packed_binding)), METH_FASTCALL,
     "lstm_ext.LSTM's forward over a PackedSequence's data and batch_sizes (sorted order); returns (output, "
     "(h_n, c_n))."},
    {"gru_packed", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gru_packed_binding)), METH_FASTCALL,
     "lstm_ext.GRU's forward over a PackedSequence's data and batch_sizes (sorted order); returns (output, h_n)."},
    {"layer_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(layer_forward_binding)),
     METH_FASTCALL, "torch.ops.lstm_ext.layer_forward, directly; returns (output, (h_n, c_n))."},
    {"gru", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gru_binding)), METH_FASTCALL,
     "torch.ops.lstm_ext.gru without the argument parsing of torch.ops; returns (output, h_n)."},
    {"gru_layer_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gru_layer_forward_binding)),
     METH_FASTCALL, "torch.ops.lstm_ext.gru_layer_forward, directly; returns (output, h_n)."},
    {"ln_layer_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(ln_layer_forward_binding)),
     METH_FASTCALL, "torch.ops.lstm_ext.ln_lstm_layer_forward, directly; returns (output, (h_n, c_n))."},
    {"zoneout_masks", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(zoneout_masks_binding)),
     METH_FASTCALL, "Zoneout's two masks for one layer and direction in training, as the lstm operator draws them."},
    {"cell_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(cell_forward_binding)),
     METH_FASTCALL, "torch.ops.lstm_ext.cell_forward, directly; returns (h, c)."},
    {"pack_padded", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(pack_padded_binding)),
     METH_FASTCALL, "torch.nn.utils.rnn.pack_padded_sequence's fields as one row gather, or None to defer to it."},
    {"pad_packed", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(pad_packed_binding)), METH_FASTCALL,
     "torch.nn.utils.rnn.pad_packed_sequence as one row scatter, or None to defer to it."},
    {"cpu_capability", cpu_capability, METH_NOARGS, "CPU kernels in use: DEFAULT, AVX2 or AVX512."},
    {"set_cpu_capability", set_cpu_capability, METH_O, "Choose the CPU kernels (tests, benchmarks)."},
    {"compiled_cpu_capabilities", compiled_cpu_capabilities, METH_NOARGS,
     "Comma-separated CPU capabilities compiled into this build."},
    {"_set_cpu_specialized", set_cpu_specialized, METH_O,
     "Tests: False sends CPU tensors down the device-generic path that CUDA tensors take; returns the "
     "previous setting."},
    {"empty_cache", empty_cache, METH_NOARGS, "Free the kept host buffers; returns the bytes freed."},
    {"cached_bytes", cached_bytes, METH_NOARGS, "Bytes of host buffers kept for reuse."},
    {"pool_limit_bytes", pool_limit_bytes, METH_NOARGS, "The most bytes the host buffer pool keeps (LSTM_EXT_POOL_MB)."},
    {"with_cuda", with_cuda, METH_NOARGS, "Whether the CUDA kernels were built."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C", "lstm_ext native operators", -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kModule); }
