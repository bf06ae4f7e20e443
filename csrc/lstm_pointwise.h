// The LSTM cell's pointwise maths, written once for every backend.
//
// Each function is a template over the value type T so the same formula is
// instantiated for a scalar (the CUDA kernels, the CPU tail loops) and for
// at::vec::Vectorized<float/double> (the CPU SIMD body). The CPU tests
// therefore exercise the very formulas that the GPU runs.
//
// Gate order everywhere is i, f, g, o (torch.nn.LSTMCell's order).
#pragma once

#include <cmath>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LSTM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LSTM_HOST_DEVICE inline
#endif

namespace lstm_ext {

// exp and tanh: scalar overloads for float and double (the math library's, or
// CUDA's); any other type is a SIMD vector (at::vec::Vectorized).
LSTM_HOST_DEVICE float lstm_exp(float x) { return ::expf(x); }
LSTM_HOST_DEVICE double lstm_exp(double x) { return ::exp(x); }
LSTM_HOST_DEVICE float lstm_tanh(float x) { return ::tanhf(x); }
LSTM_HOST_DEVICE double lstm_tanh(double x) { return ::tanh(x); }
// For float vectors: ATen's inline polynomial exp_u20 (the one its softmax
// uses; within ~20 ulp, about 1e-6 relative) instead of Sleef's call; exp is
// ~85% of the pointwise cost and this halves it. exp_u20 clamps NaN to a finite
// value, so NaN lanes are put back. double keeps Sleef's exp (1 ulp).
template <typename Vec>
inline Vec lstm_exp(const Vec& x) {
  if constexpr (std::is_same_v<typename Vec::value_type, float>) {
    return Vec::blendv(x.exp_u20(), x, x != x);
  } else {
    return x.exp();
  }
}

// SIMD tanh from one exp: tanh|x| = (1 - e^-2|x|) / (1 + e^-2|x|), about 3x
// cheaper than Sleef's tanh and it dominates the pointwise cost. Where that
// difference cancels, a Taylor series takes over. double: Sleef's exp, the
// series to x^9 below |x| = 0.05 (relative error < 1e-15 there). float:
// exp_u20 (lstm_exp), whose error the quotient damps (by <= 0.75) only from
// |x| = 0.55 on, so below it the series to x^17 (truncation < 5e-9, ~1.2 ulp
// evaluated in float); Sleef's exp was a third of the float forward's
// pointwise pass. Exact at +-inf, NaN stays NaN.
template <typename Vec>
inline Vec lstm_tanh(const Vec& x) {
  const Vec zero(0), one(1), two(2);
  const Vec ax = x.abs();
  const Vec x2 = ax * ax;
  Vec magnitude;
  if constexpr (std::is_same_v<typename Vec::value_type, float>) {
    const Vec t = lstm_exp(zero - two * ax);
    const Vec large = (one - t) / (one + t);
    Vec series(6404582.0 / 10854718875);  // the coefficients of x^17 down to x^3
    for (const double c : {-929569.0 / 638512875, 21844.0 / 6081075, -1382.0 / 155925, 62.0 / 2835,
                           -17.0 / 315, 2.0 / 15, -1.0 / 3}) {
      series = series * x2 + Vec(c);
    }
    magnitude = Vec::blendv(large, ax * (one + x2 * series), ax < Vec(0.55));
  } else {
    const Vec t = (zero - two * ax).exp();
    const Vec large = (one - t) / (one + t);
    const Vec small =
        ax * (one + x2 * (Vec(-1.0 / 3) + x2 * (Vec(2.0 / 15) + x2 * (Vec(-17.0 / 315) + x2 * Vec(62.0 / 2835)))));
    magnitude = Vec::blendv(large, small, ax < Vec(0.05));
  }
  return Vec::blendv(magnitude, zero - magnitude, x < zero);
}

// tanh for results rounded to bfloat16 next (a bfloat16 layer's h; its c
// stays float): float vectors take lstm_tanh's quotient at every |x|,
// without the series below 0.55, so the error there is ~5e-7 absolute
// (the relative error grows as |x| falls, where bfloat16's absolute step
// shrinks too). The series and its blend were ~15% of the pointwise pass of
// a bfloat16 forward at B=16, H=128 (AVX-512). Everything else: lstm_tanh.
LSTM_HOST_DEVICE float lstm_tanh_rounded(float x) { return lstm_tanh(x); }
LSTM_HOST_DEVICE double lstm_tanh_rounded(double x) { return lstm_tanh(x); }
template <typename Vec>
inline Vec lstm_tanh_rounded(const Vec& x) {
  if constexpr (std::is_same_v<typename Vec::value_type, float>) {
    const Vec zero(0), one(1);
    const Vec t = lstm_exp(zero - Vec(2) * x.abs());
    const Vec magnitude = (one - t) / (one + t);
    return Vec::blendv(magnitude, zero - magnitude, x < zero);
  } else {
    return lstm_tanh(x);
  }
}

// 1 / (1 + e^-x): saturates to exactly 0 and 1 at +-inf, NaN stays NaN.
template <typename T>
LSTM_HOST_DEVICE T lstm_sigmoid(const T& x) {
  const T one(1);
  return one / (one + lstm_exp(T(0) - x));
}

// Forward of one element: pre-activations in, activated gates, c and h out.
// kRounded: h is rounded to bfloat16 next, and tanh is lstm_tanh_rounded.
template <bool kRounded = false, typename T>
LSTM_HOST_DEVICE void lstm_forward_point(
    const T& pre_i, const T& pre_f, const T& pre_g, const T& pre_o, const T& c_prev,
    T& i, T& f, T& g, T& o, T& c, T& h) {
  i = lstm_sigmoid(pre_i);
  f = lstm_sigmoid(pre_f);
  g = kRounded ? lstm_tanh_rounded(pre_g) : lstm_tanh(pre_g);
  o = lstm_sigmoid(pre_o);
  c = f * c_prev + i * g;
  h = o * (kRounded ? lstm_tanh_rounded(c) : lstm_tanh(c));
}

// Backward of one element. Inputs: the activated gates saved by the forward,
// c_prev, the new c, and the incoming gradients of h and c. Outputs: the
// gradients of the four pre-activations and of c_prev. tanh(c) is recomputed
// rather than saved: one transcendental is cheaper than B*H more memory.
template <typename T>
LSTM_HOST_DEVICE void lstm_backward_point(
    const T& i, const T& f, const T& g, const T& o, const T& c_prev, const T& c,
    const T& grad_h, const T& grad_c,
    T& grad_pre_i, T& grad_pre_f, T& grad_pre_g, T& grad_pre_o, T& grad_c_prev) {
  const T one(1);
  const T tanh_c = lstm_tanh(c);
  const T grad_c_total = grad_c + grad_h * o * (one - tanh_c * tanh_c);
  grad_pre_i = grad_c_total * g * i * (one - i);
  grad_pre_f = grad_c_total * c_prev * f * (one - f);
  grad_pre_g = grad_c_total * i * (one - g * g);
  grad_pre_o = grad_h * tanh_c * o * (one - o);
  grad_c_prev = grad_c_total * f;
}

}  // namespace lstm_ext
