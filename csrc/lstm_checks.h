// Argument checks shared by the operators (lstm_ops.cpp, lstm_layers.cpp) and
// the direct bindings. Their messages are the ones the fake implementations
// in lstm_ext/_ops.py raise for the same input, word for word: a bad call
// reads the same on real tensors, meta tensors and under torch.compile.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>
#include <utility>

namespace lstm_ext {

// "torch.float32" rather than c10's "Float": the names Python users know.
inline std::string dtype_name(c10::ScalarType t) {
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
    case at::kQUInt8: return "torch.quint8";
    case at::kQInt8: return "torch.qint8";
    case at::kQInt32: return "torch.qint32";
    default: return std::string("torch.") + c10::toString(t);
  }
}

// (2, 2, 3) and (5,): shapes as Python users see them (sizes or SymInts).
template <typename Size>
std::string python_shape(c10::ArrayRef<Size> sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t d = 0; d < sizes.size(); ++d) out << (d ? ", " : "") << sizes[d];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}
inline std::string python_shape(const std::vector<int64_t>& sizes) { return python_shape(at::IntArrayRef(sizes)); }

// What a tensor is that no kernel here takes: quantized, sparse, mkldnn, or
// a dtype that is not floating point; empty when it is a dense float tensor.
inline std::string unsupported_kind(const at::Tensor& t) {
  if (t.is_quantized()) return "a quantized tensor (" + dtype_name(t.scalar_type()) + ")";
  if (t.layout() != c10::kStrided) {
    std::ostringstream out;
    out << "a tensor of layout " << t.layout();
    return out.str();
  }
  const auto s = t.scalar_type();
  if (s == at::kFloat || s == at::kDouble || s == at::kBFloat16 || s == at::kHalf) return "";
  return dtype_name(s);
}

// A dense floating point tensor (float32, float64, bfloat16 or float16).
inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  const std::string kind = unsupported_kind(t);
  TORCH_CHECK_TYPE(kind.empty(), op, ": ", name,
                   " must be a dense floating point tensor (float32, float64, bfloat16 or float16), got ", kind);
}

// Whether check_like would pass, without building a message.
inline bool is_like(const at::Tensor& t, const at::Tensor& like) {
  return !t.is_quantized() && t.layout() == c10::kStrided && t.scalar_type() == like.scalar_type() &&
         t.device() == like.device() && at::isFloatingType(like.scalar_type());
}

// A dense float tensor with the dtype and device of `like` (named like_name).
inline void check_like(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                       const at::Tensor& like) {
  check_floating(op, name, t);
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": dtype mismatch: ", name, " is ",
                   dtype_name(t.scalar_type()), " but ", like_name, " is ", dtype_name(like.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": device mismatch: ", name, " is on ", t.device(), " but ",
                    like_name, " is on ", like.device());
}

// The sequence layer's recurrent weight [gates*H, H] (4 gates: the LSTM's, 3:
// the GRU's): returns H.
inline int64_t check_recurrent_weight(const char* op, const at::Tensor& weight_hh, int64_t gates) {
  TORCH_CHECK_VALUE(weight_hh.dim() == 2 && weight_hh.size(1) * gates == weight_hh.size(0), op,
                    ": weight_hh must have shape [", gates, "*hidden_size, hidden_size], got ", weight_hh.sizes());
  return weight_hh.size(1);
}

// A layer operator's input against weight_ih [gates*H, I]: (T, B, I), or a
// PackedSequence's data (N, I) when packed, its batch then h0's rows.
// Returns (I, B).
inline std::pair<int64_t, int64_t> check_layer_input(const char* op, const at::Tensor& input,
                                                     const at::Tensor& weight_ih, const at::Tensor& h0,
                                                     int64_t gates, int64_t H, bool packed) {
  if (packed) {
    TORCH_CHECK_VALUE(input.dim() == 2, op, ": with batch_sizes, input must be 2-D (sum of lengths, input_size): "
                      "a PackedSequence's data, got ", input.sizes());
  } else {
    TORCH_CHECK_VALUE(input.dim() == 3, op, ": input must be 3-D (seq_len, batch, input_size) here, got ",
                      input.sizes());
  }
  TORCH_CHECK_VALUE(weight_ih.dim() == 2 && weight_ih.size(0) == gates * H, op, ": weight_ih must have shape [",
                    gates, "*hidden_size, input_size] = [", gates * H, ", input_size], got ", weight_ih.sizes());
  const int64_t I = weight_ih.size(1);
  const int64_t B = packed ? (h0.dim() > 0 ? h0.size(0) : 0) : input.size(1);
  TORCH_CHECK_VALUE(input.size(-1) == I, op, ": input has ", input.size(-1), " features but input_size is ", I,
                    " (input shape ", input.sizes(), ")");
  return {I, B};
}

}  // namespace lstm_ext
