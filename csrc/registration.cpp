// The one place where operators get their schemas and their kernels, plus the
// tiny Python module lstm_ext._C (no pybind11: it only reports the build).
#include <Python.h>
#include <torch/library.h>

#include "lstm_kernels.h"
#include "lstm_ops.h"

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
      "Tensor? bias_ih, Tensor? bias_hh, bool reverse) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def(
      "layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor h0, "
      "Tensor c0, Tensor weight_ih, Tensor weight_hh, Tensor output, Tensor gates, Tensor cells, bool reverse) "
      "-> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_weight_ih, Tensor grad_weight_hh, "
      "Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  m.impl("cell_forward", &lstm_ext::cell_forward);
  m.impl("cell_backward", &lstm_ext::cell_backward);
  m.impl("layer_forward", &lstm_ext::layer_forward);
  m.impl("layer_backward", &lstm_ext::layer_backward);
}

TORCH_LIBRARY_IMPL(lstm_ext, Autograd, m) {
  m.impl("cell_forward", &lstm_ext::cell_forward_autograd);
  m.impl("layer_forward", &lstm_ext::layer_forward_autograd);
}

#ifdef LSTM_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(lstm_ext, CUDA, m) {
  m.impl("cell_forward", &lstm_ext::cell_forward);
  m.impl("cell_backward", &lstm_ext::cell_backward);
  m.impl("layer_forward", &lstm_ext::layer_forward);
  m.impl("layer_backward", &lstm_ext::layer_backward);
}
#endif

namespace {

PyObject* cpu_capability(PyObject*, PyObject*) {
  return PyUnicode_FromString(lstm_ext::cpu::kernel_capability());
}

PyObject* set_cpu_capability(PyObject*, PyObject* arg) {
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

PyObject* with_cuda(PyObject*, PyObject*) {
#ifdef LSTM_EXT_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef kMethods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS, "CPU kernels in use: DEFAULT, AVX2 or AVX512."},
    {"set_cpu_capability", set_cpu_capability, METH_O, "Choose the CPU kernels (tests, benchmarks)."},
    {"compiled_cpu_capabilities", compiled_cpu_capabilities, METH_NOARGS,
     "Comma-separated CPU capabilities compiled into this build."},
    {"with_cuda", with_cuda, METH_NOARGS, "Whether the CUDA kernels were built."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C", "lstm_ext native operators", -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kModule); }
