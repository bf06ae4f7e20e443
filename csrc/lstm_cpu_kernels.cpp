// CPU pointwise passes, vectorized with at::vec and parallel with
// at::parallel_for.
//
// The build compiles this file once per CPU capability (DEFAULT, AVX2, AVX512)
// with -DCPU_CAPABILITY=<name> and that capability's -m flags, as ATen does
// for its own kernels; lstm_cpu_dispatch.cpp picks one at run time. Everything
// here lives in namespace CPU_CAPABILITY so the copies never collide.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/OpMathType.h>

#include "lstm_kernels.h"
#include "lstm_pointwise.h"

namespace lstm_ext {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// Rows per task: below about 16K elements a pass costs less than waking the
// thread pool, so small problems stay on the calling thread.
constexpr int64_t kElementsPerTask = 16384;

inline int64_t grain_rows(int64_t hidden) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, hidden));
}

// Loads and stores in the compute type: float/double as they are, the 16-bit
// floats widened to float (so bfloat16 and half accumulate in float).
template <typename scalar_t>
struct VecIO {
  using opmath_t = scalar_t;
  using Vec = Vectorized<scalar_t>;
  static Vec load(const scalar_t* p) { return Vec::loadu(p); }
  static void store(scalar_t* p, const Vec& v) { v.store(p); }
};

template <typename reduced_t>
struct ReducedVecIO {
  using opmath_t = float;
  using Vec = Vectorized<float>;
  static Vec load(const reduced_t* p) {
    Vec out;
    at::vec::load_to_float(p, out);
    return out;
  }
  static void store(reduced_t* p, const Vec& v) {
    at::vec::convert_from_float<reduced_t>(v, v).store(p, Vec::size());
  }
};
template <>
struct VecIO<at::BFloat16> : ReducedVecIO<at::BFloat16> {};
template <>
struct VecIO<at::Half> : ReducedVecIO<at::Half> {};

template <typename scalar_t>
void forward_typed(const PointwiseForwardArgs& a) {
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using Vec = typename IO::Vec;
  constexpr int64_t kWidth = Vec::size();
  const int64_t H = a.hidden;
  auto* gates = static_cast<scalar_t*>(a.gates);
  const auto* c_prev = static_cast<const scalar_t*>(a.c_prev);
  auto* h_out = static_cast<scalar_t*>(a.h);
  auto* c_out = static_cast<scalar_t*>(a.c);

  at::parallel_for(0, a.batch, grain_rows(H), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t b = row_begin; b < row_end; ++b) {
      scalar_t* gi = gates + b * a.gates_stride;
      scalar_t* gf = gi + H;
      scalar_t* gg = gi + 2 * H;
      scalar_t* go = gi + 3 * H;
      const scalar_t* cp = c_prev + b * a.c_prev_stride;
      scalar_t* hb = h_out + b * a.h_stride;
      scalar_t* cb = c_out + b * a.c_stride;
      int64_t j = 0;
      for (; j + kWidth <= H; j += kWidth) {
        Vec i, f, g, o, c, h;
        lstm_forward_point(IO::load(gi + j), IO::load(gf + j), IO::load(gg + j),
                           IO::load(go + j), IO::load(cp + j), i, f, g, o, c, h);
        IO::store(gi + j, i);
        IO::store(gf + j, f);
        IO::store(gg + j, g);
        IO::store(go + j, o);
        IO::store(cb + j, c);
        IO::store(hb + j, h);
      }
      for (; j < H; ++j) {
        opmath_t i, f, g, o, c, h;
        lstm_forward_point<opmath_t>(gi[j], gf[j], gg[j], go[j], cp[j], i, f, g, o, c, h);
        gi[j] = i;
        gf[j] = f;
        gg[j] = g;
        go[j] = o;
        cb[j] = c;
        hb[j] = h;
      }
    }
  });
}

template <typename scalar_t>
void backward_typed(const PointwiseBackwardArgs& a) {
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using Vec = typename IO::Vec;
  constexpr int64_t kWidth = Vec::size();
  const int64_t H = a.hidden;
  const auto* gates = static_cast<const scalar_t*>(a.gates);
  const auto* c_prev = static_cast<const scalar_t*>(a.c_prev);
  const auto* c_new = static_cast<const scalar_t*>(a.c);
  const auto* grad_h = static_cast<const scalar_t*>(a.grad_h);
  const auto* grad_c = static_cast<const scalar_t*>(a.grad_c);
  auto* grad_gates = static_cast<scalar_t*>(a.grad_gates);
  auto* grad_c_prev = static_cast<scalar_t*>(a.grad_c_prev);

  at::parallel_for(0, a.batch, grain_rows(H), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t b = row_begin; b < row_end; ++b) {
      const scalar_t* gi = gates + b * a.gates_stride;
      const scalar_t* gf = gi + H;
      const scalar_t* gg = gi + 2 * H;
      const scalar_t* go = gi + 3 * H;
      const scalar_t* cp = c_prev + b * a.c_prev_stride;
      const scalar_t* cb = c_new + b * a.c_stride;
      const scalar_t* dh = grad_h + b * a.grad_h_stride;
      const scalar_t* dc = grad_c + b * a.grad_c_stride;
      scalar_t* di = grad_gates + b * a.grad_gates_stride;
      scalar_t* df = di + H;
      scalar_t* dg = di + 2 * H;
      scalar_t* dout = di + 3 * H;
      scalar_t* dcp = grad_c_prev + b * a.grad_c_prev_stride;
      int64_t j = 0;
      for (; j + kWidth <= H; j += kWidth) {
        Vec vi, vf, vg, vo, vcp;
        lstm_backward_point(IO::load(gi + j), IO::load(gf + j), IO::load(gg + j),
                            IO::load(go + j), IO::load(cp + j), IO::load(cb + j),
                            IO::load(dh + j), IO::load(dc + j), vi, vf, vg, vo, vcp);
        IO::store(di + j, vi);
        IO::store(df + j, vf);
        IO::store(dg + j, vg);
        IO::store(dout + j, vo);
        IO::store(dcp + j, vcp);
      }
      for (; j < H; ++j) {
        opmath_t si, sf, sg, so, scp;
        lstm_backward_point<opmath_t>(gi[j], gf[j], gg[j], go[j], cp[j], cb[j], dh[j], dc[j],
                                      si, sf, sg, so, scp);
        di[j] = si;
        df[j] = sf;
        dg[j] = sg;
        dout[j] = so;
        dcp[j] = scp;
      }
    }
  });
}

void pointwise_forward(const PointwiseForwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, args.dtype, "lstm_ext_pointwise_forward",
                                  [&] { forward_typed<scalar_t>(args); });
}

void pointwise_backward(const PointwiseBackwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, args.dtype, "lstm_ext_pointwise_backward",
                                  [&] { backward_typed<scalar_t>(args); });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace lstm_ext
