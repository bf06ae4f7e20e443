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

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if (defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)) && (defined(__x86_64__) || defined(_M_X64))
#include <immintrin.h>
#endif

#include "lstm_kernels.h"
#include "gru_pointwise.h"
#include "layernorm_lstm_pointwise.h"
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

#if defined(CPU_CAPABILITY_AVX2) && (defined(__x86_64__) || defined(_M_X64))
// Stores lanes [0, count) of v (count clamped to [0, 8]) with plain stores.
// Not vmaskmovps: on Zen 2 a masked store is microcoded, and at the course's
// size (H = 3: 12 of 16 columns) the tile spent ~60% of its time on them
// (perf). A/B there: LSTM forward -10%, GRU forward -26% (its products are
// four part-filled vectors a step).
inline void avx2_store_lanes(float* dst, __m256 v, int64_t count) {
  if (count >= 8) {
    _mm256_storeu_ps(dst, v);
    return;
  }
  __m128 part = _mm256_castps256_ps128(v);
  if (count >= 4) {
    _mm_storeu_ps(dst, part);
    part = _mm256_extractf128_ps(v, 1);
    dst += 4;
    count -= 4;
  }
  if (count >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(dst), part);
    part = _mm_movehl_ps(part, part);
    dst += 2;
    count -= 2;
  }
  if (count >= 1) _mm_store_ss(dst, part);
}

#endif

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

// One stream of elements: element (b, j) lives at base[b * row_stride + j].
template <typename T>
struct Stream {
  T* base;
  int64_t row_stride;
};

#if defined(CPU_CAPABILITY_AVX2) && (defined(__x86_64__) || defined(_M_X64))
// for_each_element for float rows of at most 4 columns (the course's H = 3)
// under AVX2: two rows a vector, each in a 4-lane half (masked loads, which
// zero the lanes past H; plain stores of H lanes), so a row costs a load or
// store per stream instead of a column-by-column gather and scatter.
// Alternating builds at the course's size: the LSTM's backward operator
// 58.8 -> 56.2 µs, the GRU's forward 57-59 -> 52-53 µs.
template <int NIn, int NOut, typename F>
void for_each_row_pair(int64_t row_begin, int64_t row_end, int64_t H,
                       const std::array<Stream<const float>, NIn>& in, const std::array<Stream<float>, NOut>& out,
                       const F& f) {
  const __m128i mask = _mm_cmpgt_epi32(_mm_set1_epi32(static_cast<int>(H)), _mm_setr_epi32(0, 1, 2, 3));
  Vectorized<float> vin[NIn];
  Vectorized<float> vout[NOut];
  for (int64_t b = row_begin; b < row_end; b += 2) {
    const bool two = b + 1 < row_end;
    for (int k = 0; k < NIn; ++k) {
      const float* row = in[k].base + b * in[k].row_stride;
      const __m128 first = _mm_maskload_ps(row, mask);
      const __m128 second = two ? _mm_maskload_ps(row + in[k].row_stride, mask) : _mm_setzero_ps();
      vin[k] = _mm256_insertf128_ps(_mm256_castps128_ps256(first), second, 1);
    }
    f(vin, vout);
    for (int k = 0; k < NOut; ++k) {
      float* row = out[k].base + b * out[k].row_stride;
      const __m256 v = vout[k];
      avx2_store_lanes(row, v, H);
      if (two) avx2_store_lanes(row + out[k].row_stride, _mm256_castps128_ps256(_mm256_extractf128_ps(v, 1)), H);
    }
  }
}
#endif

#if defined(CPU_CAPABILITY_AVX512) && (defined(__x86_64__) || defined(_M_X64))
// for_each_row_pair's AVX-512 form: four rows a vector, each in a 128-bit
// quarter (masked loads, which zero the lanes past H; masked stores of H
// lanes), instead of one gather and sixteen scalar stores per column and
// stream.
template <int NIn, int NOut, typename F>
void for_each_row_quad(int64_t row_begin, int64_t row_end, int64_t H,
                       const std::array<Stream<const float>, NIn>& in, const std::array<Stream<float>, NOut>& out,
                       const F& f) {
  const auto lanes = static_cast<__mmask8>((1u << H) - 1);
  Vectorized<float> vin[NIn];
  Vectorized<float> vout[NOut];
  for (int64_t b = row_begin; b < row_end; b += 4) {
    const int64_t n = std::min<int64_t>(4, row_end - b);
    for (int k = 0; k < NIn; ++k) {
      const float* row = in[k].base + b * in[k].row_stride;
      __m512 v = _mm512_zextps128_ps512(_mm_maskz_loadu_ps(lanes, row));
      if (n > 1) v = _mm512_insertf32x4(v, _mm_maskz_loadu_ps(lanes, row + in[k].row_stride), 1);
      if (n > 2) v = _mm512_insertf32x4(v, _mm_maskz_loadu_ps(lanes, row + 2 * in[k].row_stride), 2);
      if (n > 3) v = _mm512_insertf32x4(v, _mm_maskz_loadu_ps(lanes, row + 3 * in[k].row_stride), 3);
      vin[k] = v;
    }
    f(vin, vout);
    for (int k = 0; k < NOut; ++k) {
      float* row = out[k].base + b * out[k].row_stride;
      const __m512 v = vout[k];
      _mm_mask_storeu_ps(row, lanes, _mm512_castps512_ps128(v));
      if (n > 1) _mm_mask_storeu_ps(row + out[k].row_stride, lanes, _mm512_extractf32x4_ps(v, 1));
      if (n > 2) _mm_mask_storeu_ps(row + 2 * out[k].row_stride, lanes, _mm512_extractf32x4_ps(v, 2));
      if (n > 3) _mm_mask_storeu_ps(row + 3 * out[k].row_stride, lanes, _mm512_extractf32x4_ps(v, 3));
    }
  }
}
#endif

// Applies f(const Vec in[NIn], Vec out[NOut]) to every element (b, j) of
// rows [row_begin, row_end) and columns [0, H). Full vectors are loaded
// straight from each row; the leftover columns (all of them when H is smaller
// than a vector, as at the course's H=3) are taken column by column, a vector
// of rows at a time (gathered), so small hidden sizes run at SIMD speed too.
// Under AVX2, float rows of at most 4 columns go two rows a vector instead
// (for_each_row_pair) unless kRowPairs is false (for_each_column); under
// AVX-512 four rows a vector (for_each_row_quad) in every pass.
template <typename scalar_t, int NIn, int NOut, typename F, bool kRowPairs = true>
void for_each_element(int64_t row_begin, int64_t row_end, int64_t H,
                      const std::array<Stream<const scalar_t>, NIn>& in,
                      const std::array<Stream<scalar_t>, NOut>& out, const F& f) {
  using IO = VecIO<scalar_t>;
  using opmath_t = typename IO::opmath_t;
  using Vec = typename IO::Vec;
  constexpr int64_t kWidth = Vec::size();
  Vec vin[NIn];
  Vec vout[NOut];
  const int64_t full = H - H % kWidth;
#if defined(CPU_CAPABILITY_AVX2) && (defined(__x86_64__) || defined(_M_X64))
  if constexpr (std::is_same_v<scalar_t, float> && kRowPairs) {
    if (H <= 4) {
      for_each_row_pair<NIn, NOut>(row_begin, row_end, H, in, out, f);
      return;
    }
  }
#endif
#if defined(CPU_CAPABILITY_AVX512) && (defined(__x86_64__) || defined(_M_X64))
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (H <= 4) {
      for_each_row_quad<NIn, NOut>(row_begin, row_end, H, in, out, f);
      return;
    }
  }
#endif

  for (int64_t b = row_begin; b < row_end; ++b) {
    for (int64_t j = 0; j < full; j += kWidth) {
      for (int k = 0; k < NIn; ++k) vin[k] = IO::load(in[k].base + b * in[k].row_stride + j);
      f(vin, vout);
      for (int k = 0; k < NOut; ++k) IO::store(out[k].base + b * out[k].row_stride + j, vout[k]);
    }
  }
  if (full == H) return;

  // Leftover columns: a vector of rows at a time. float and double gather a
  // full vector of rows with one instruction (strided by the stream's row
  // stride); the last partial block of rows, and the 16-bit types, go through
  // a staging buffer. Results go back element by element.
  using Index = Vectorized<at::vec::int_same_size_t<opmath_t>>;
  using index_t = at::vec::int_same_size_t<opmath_t>;
  Index offsets[NIn];
  for (int k = 0; k < NIn; ++k) offsets[k] = Index::arange(0, static_cast<index_t>(in[k].row_stride));
  alignas(64) opmath_t staged[NIn][kWidth] = {};
  alignas(64) opmath_t result[kWidth];
  for (int64_t j = full; j < H; ++j) {
    for (int64_t b0 = row_begin; b0 < row_end; b0 += kWidth) {
      const int64_t n = std::min(kWidth, row_end - b0);
      for (int k = 0; k < NIn; ++k) {
        const scalar_t* src = in[k].base + b0 * in[k].row_stride + j;
#if defined(CPU_CAPABILITY_AVX2) && (defined(__x86_64__) || defined(_M_X64))
        // AVX2 float: eight scalar loads into a register, not vgatherdps,
        // which on Zen 2 was ~30% of the pointwise pass at the course's size
        // (H = 3, perf). A/B there: forward -7%, forward+backward -4%.
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (n == kWidth) {
            const int64_t s = in[k].row_stride;
            vin[k] = _mm256_setr_ps(src[0], src[s], src[2 * s], src[3 * s], src[4 * s], src[5 * s], src[6 * s],
                                    src[7 * s]);
            continue;
          }
        }
#endif
        if constexpr (std::is_same_v<scalar_t, opmath_t>) {
          if (n == kWidth) {
            vin[k] = at::vec::gather<sizeof(scalar_t)>(src, offsets[k]);
            continue;
          }
        }
        for (int64_t l = 0; l < n; ++l) staged[k][l] = src[l * in[k].row_stride];
        vin[k] = Vec::loadu(staged[k]);
      }
      f(vin, vout);
      for (int k = 0; k < NOut; ++k) {
        vout[k].store(result);
        scalar_t* dst = out[k].base + b0 * out[k].row_stride + j;
        for (int64_t l = 0; l < n; ++l) dst[l * out[k].row_stride] = static_cast<scalar_t>(result[l]);
      }
    }
  }
}

// for_each_element without AVX2's row pairs: the LSTM forward's five
// transcendentals a vector make its pass compute-bound, and at H = 3 the
// pairs' 6 of 8 lanes cost more than their loads and stores save (forward
// 47-49 -> 50-58 µs at the course's size, AVX2); its backward and the
// GRU's passes, lighter in maths, gain from them. AVX-512's row quads (12
// of 16 lanes at H = 3) gain in every pass, the forward's included: at the
// course's size (Zen 5) the LSTM's forward+backward went from 61.7-62.5
// to 54.1-54.7 µs (forward 19.0-19.1 -> 17.3-17.4), with zoneout from
// 70.2-71.7 to 60.1-60.9.
template <typename scalar_t, int NIn, int NOut, typename F>
void for_each_column(int64_t row_begin, int64_t row_end, int64_t H,
                     const std::array<Stream<const scalar_t>, NIn>& in,
                     const std::array<Stream<scalar_t>, NOut>& out, const F& f) {
  for_each_element<scalar_t, NIn, NOut, F, /*kRowPairs=*/false>(row_begin, row_end, H, in, out, f);
}

// The gate streams of a view (four: the LSTM's; three: the GRU's), and the
// stream of a [B, H] view.
template <typename scalar_t, int N = 4, typename Ptr>
std::array<Stream<scalar_t>, N> gate_streams(const GatesView<Ptr>& v) {
  auto* p = static_cast<scalar_t*>(v.data);
  std::array<Stream<scalar_t>, N> streams;
  for (int k = 0; k < N; ++k) streams[k] = {p + k * v.gate_stride, v.row_stride};
  return streams;
}

template <typename scalar_t, typename Ptr>
Stream<scalar_t> row_stream(const RowsView<Ptr>& v) {
  return {static_cast<scalar_t*>(v.data), v.row_stride};
}

template <typename scalar_t>
void forward_typed(const PointwiseForwardArgs& a) {
  using Vec = typename VecIO<scalar_t>::Vec;
  const auto pre = gate_streams<const scalar_t>(a.preact);
  const auto gates = gate_streams<scalar_t>(a.gates);
  const auto c_prev = row_stream<const scalar_t>(a.c_prev);
  const std::array<Stream<scalar_t>, 6> out{{gates[0], gates[1], gates[2], gates[3],
                                             row_stream<scalar_t>(a.c), row_stream<scalar_t>(a.h)}};
  if (a.zoneout) {  // the LSTM's zoneout: its formulas as the layer norm's row pass has them
    TORCH_INTERNAL_ASSERT(a.addend.data == nullptr && !a.rounded);
    const std::array<Stream<const scalar_t>, 8> in{{pre[0], pre[1], pre[2], pre[3], c_prev,
                                                    row_stream<const scalar_t>(a.h_prev),
                                                    row_stream<const scalar_t>(a.zoneout_c),
                                                    row_stream<const scalar_t>(a.zoneout_h)}};
    const auto zoned = [](const Vec* x, Vec& i, Vec& f, Vec& g, Vec& o, Vec& c, Vec& h) {
      Vec c_candidate;
      ln_lstm_gates_point(x[0], x[1], x[2], x[3], x[4], i, f, g, o, c_candidate);
      c = zoneout_point(c_candidate, x[4], x[6]);
      h = zoneout_point(o * lstm_tanh(c_candidate), x[5], x[7]);
    };
    at::parallel_for(0, a.batch, grain_rows(a.hidden), [&](int64_t row_begin, int64_t row_end) {
      if (a.gates.data == nullptr) {
        const std::array<Stream<scalar_t>, 2> c_h{{row_stream<scalar_t>(a.c), row_stream<scalar_t>(a.h)}};
        for_each_column<scalar_t, 8, 2>(row_begin, row_end, a.hidden, in, c_h, [&](const Vec* x, Vec* y) {
          Vec i, f, g, o;
          zoned(x, i, f, g, o, y[0], y[1]);
        });
      } else {
        for_each_column<scalar_t, 8, 6>(row_begin, row_end, a.hidden, in, out, [&](const Vec* x, Vec* y) {
          zoned(x, y[0], y[1], y[2], y[3], y[4], y[5]);
        });
      }
    });
    return;
  }
  if (a.gates.data == nullptr) {  // inference: only c and h (see PointwiseForwardArgs)
    TORCH_INTERNAL_ASSERT(a.addend.data == nullptr);
    const std::array<Stream<const scalar_t>, 5> in{{pre[0], pre[1], pre[2], pre[3], c_prev}};
    const std::array<Stream<scalar_t>, 2> c_h{{row_stream<scalar_t>(a.c), row_stream<scalar_t>(a.h)}};
    at::parallel_for(0, a.batch, grain_rows(a.hidden), [&](int64_t row_begin, int64_t row_end) {
      if (a.rounded) {
        for_each_column<scalar_t, 5, 2>(row_begin, row_end, a.hidden, in, c_h, [](const Vec* x, Vec* y) {
          Vec i, f, g, o;
          lstm_forward_point</*kRounded=*/true>(x[0], x[1], x[2], x[3], x[4], i, f, g, o, y[0], y[1]);
        });
        return;
      }
      for_each_column<scalar_t, 5, 2>(row_begin, row_end, a.hidden, in, c_h, [](const Vec* x, Vec* y) {
        Vec i, f, g, o;
        lstm_forward_point(x[0], x[1], x[2], x[3], x[4], i, f, g, o, y[0], y[1]);
      });
    });
    return;
  }
  at::parallel_for(0, a.batch, grain_rows(a.hidden), [&](int64_t row_begin, int64_t row_end) {
    if (a.addend.data == nullptr && a.rounded) {
      const std::array<Stream<const scalar_t>, 5> in{{pre[0], pre[1], pre[2], pre[3], c_prev}};
      for_each_column<scalar_t, 5, 6>(row_begin, row_end, a.hidden, in, out, [](const Vec* x, Vec* y) {
        lstm_forward_point</*kRounded=*/true>(x[0], x[1], x[2], x[3], x[4], y[0], y[1], y[2], y[3], y[4], y[5]);
      });
    } else if (a.addend.data == nullptr) {
      const std::array<Stream<const scalar_t>, 5> in{{pre[0], pre[1], pre[2], pre[3], c_prev}};
      for_each_column<scalar_t, 5, 6>(row_begin, row_end, a.hidden, in, out, [](const Vec* x, Vec* y) {
        lstm_forward_point(x[0], x[1], x[2], x[3], x[4], y[0], y[1], y[2], y[3], y[4], y[5]);
      });
    } else {
      const auto add = gate_streams<const scalar_t>(a.addend);
      const std::array<Stream<const scalar_t>, 9> in{{pre[0], pre[1], pre[2], pre[3], c_prev,
                                                      add[0], add[1], add[2], add[3]}};
      for_each_column<scalar_t, 9, 6>(row_begin, row_end, a.hidden, in, out, [](const Vec* x, Vec* y) {
        lstm_forward_point(x[0] + x[5], x[1] + x[6], x[2] + x[7], x[3] + x[8], x[4],
                           y[0], y[1], y[2], y[3], y[4], y[5]);
      });
    }
  });
}

template <typename scalar_t>
void backward_typed(const PointwiseBackwardArgs& a) {
  using Vec = typename VecIO<scalar_t>::Vec;
  const auto gates = gate_streams<const scalar_t>(a.gates);
  const auto grad_gates = gate_streams<scalar_t>(a.grad_gates);
  const std::array<Stream<const scalar_t>, 8> in{{
      gates[0], gates[1], gates[2], gates[3], row_stream<const scalar_t>(a.c_prev), row_stream<const scalar_t>(a.c),
      row_stream<const scalar_t>(a.grad_h), row_stream<const scalar_t>(a.grad_c)}};
  const std::array<Stream<scalar_t>, 5> out{{grad_gates[0], grad_gates[1], grad_gates[2], grad_gates[3],
                                             row_stream<scalar_t>(a.grad_c_prev)}};
  at::parallel_for(0, a.batch, grain_rows(a.hidden), [&](int64_t row_begin, int64_t row_end) {
    for_each_element<scalar_t, 8, 5>(row_begin, row_end, a.hidden, in, out, [](const Vec* x, Vec* y) {
      lstm_backward_point(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], y[0], y[1], y[2], y[3], y[4]);
    });
  });
}

template <typename scalar_t>
void gru_forward_typed(const GruPointwiseForwardArgs& a) {
  using Vec = typename VecIO<scalar_t>::Vec;
  const auto pre = gate_streams<const scalar_t, 3>(a.preact);
  const auto gates = gate_streams<scalar_t, 3>(a.gates);
  // The bias as a stream whose rows all start at its first element.
  const std::array<Stream<const scalar_t>, 6> in{{pre[0], pre[1], pre[2], row_stream<const scalar_t>(a.hidden_n_raw),
                                                  {static_cast<const scalar_t*>(a.bias_hn), 0},
                                                  row_stream<const scalar_t>(a.h_prev)}};
  const std::array<Stream<scalar_t>, 5> out{{gates[0], gates[1], gates[2], row_stream<scalar_t>(a.hidden_n),
                                             row_stream<scalar_t>(a.h)}};
  at::parallel_for(0, a.batch, grain_rows(a.hidden), [&](int64_t row_begin, int64_t row_end) {
    for_each_element<scalar_t, 6, 5>(row_begin, row_end, a.hidden, in, out, [](const Vec* x, Vec* y) {
      y[3] = x[3] + x[4];
      gru_forward_point(x[0], x[1], x[2], y[3], x[5], y[0], y[1], y[2], y[4]);
    });
  });
}

template <typename scalar_t>
void gru_backward_typed(const GruPointwiseBackwardArgs& a) {
  using Vec = typename VecIO<scalar_t>::Vec;
  const auto gates = gate_streams<const scalar_t, 3>(a.gates);
  const auto grad_input = gate_streams<scalar_t, 3>(a.grad_input_gates);
  const auto grad_hidden = gate_streams<scalar_t, 3>(a.grad_hidden_gates);
  const auto grad_h_prev = row_stream<scalar_t>(a.grad_h_prev);
  const std::array<Stream<const scalar_t>, 7> in{{gates[0], gates[1], gates[2],
                                                  row_stream<const scalar_t>(a.hidden_n),
                                                  row_stream<const scalar_t>(a.h_prev),
                                                  row_stream<const scalar_t>(a.grad_h),
                                                  {grad_h_prev.base, grad_h_prev.row_stride}}};
  const std::array<Stream<scalar_t>, 7> out{{grad_input[0], grad_input[1], grad_input[2], grad_hidden[0],
                                             grad_hidden[1], grad_hidden[2], grad_h_prev}};
  at::parallel_for(0, a.batch, grain_rows(a.hidden), [&](int64_t row_begin, int64_t row_end) {
    for_each_element<scalar_t, 7, 7>(row_begin, row_end, a.hidden, in, out, [](const Vec* x, Vec* y) {
      Vec direct;
      gru_backward_point(x[0], x[1], x[2], x[3], x[4], x[5], y[0], y[1], y[2], y[5], direct);
      y[3] = y[0];
      y[4] = y[1];
      y[6] = x[6] + direct;
    });
  });
}

// The LayerNorm LSTM's row passes. Each row is walked a SIMD vector at a
// time; the last, partial vector is loaded and stored with a count (its
// missing lanes read as zeros and are never stored or summed).
template <typename scalar_t>
struct RowIO {
  using Vec = Vectorized<scalar_t>;
  static constexpr int64_t W = Vec::size();
  static Vec load(const scalar_t* p, int64_t n) { return n == W ? Vec::loadu(p) : Vec::loadu(p, n); }
  static void store(scalar_t* p, const Vec& v, int64_t n) {
    if (n == W) {
      v.store(p);
    } else {
      v.store(p, n);
    }
  }
  // v with lanes n and up zeroed: a row's partial last vector, added into a
  // vector of running sums. (Summing each vector's lanes into a scalar
  // instead, one dependent add per element, made row_moments 14% of the
  // LayerNorm LSTM's forward at B=32, H=256; Zen 5.)
  static Vec first(const Vec& v, int64_t n) { return n == W ? v : Vec::set(Vec(0), v, n); }
  // The sum of a vector of running sums' lanes.
  static scalar_t total(const Vec& v) {
    alignas(64) scalar_t lanes[W];
    v.store(lanes);
    scalar_t total = 0;
    for (int64_t l = 0; l < W; ++l) total += lanes[l];
    return total;
  }
  // Zoneout's d for columns [j, j + n) of a row: the mask's, or the rate.
  static Vec weight(const scalar_t* mask, scalar_t rate, int64_t j, int64_t n) {
    return mask != nullptr ? load(mask + j, n) : Vec(rate);
  }
};

// The same interface one element at a time: rows narrower than a SIMD
// vector (the course's H = 3) run this way, since a partial vector's load
// and store go through a staging copy (at H = 3 they made a layer's call
// 2.5x slower than the scalar loop).
template <typename scalar_t>
struct ScalarRowIO {
  using Vec = scalar_t;
  static constexpr int64_t W = 1;
  static Vec load(const scalar_t* p, int64_t) { return *p; }
  static void store(scalar_t* p, const Vec& v, int64_t) { *p = v; }
  static Vec first(const Vec& v, int64_t) { return v; }
  static scalar_t total(const Vec& v) { return v; }
  static Vec weight(const scalar_t* mask, scalar_t rate, int64_t j, int64_t) {
    return mask != nullptr ? mask[j] : rate;
  }
};

// Whether rows of width n take ScalarRowIO.
template <typename scalar_t>
bool narrow_rows(int64_t n) {
  return n < Vectorized<scalar_t>::size();
}

// Mean and 1 / sqrt(biased variance + eps) of x[0, n), two passes (the
// float64 results match torch's layer_norm to ~1e-15).
template <typename scalar_t, typename IO = RowIO<scalar_t>>
void row_moments(const scalar_t* x, int64_t n, double eps, scalar_t& mean, scalar_t& rstd) {
  using Vec = typename IO::Vec;
  Vec sums(0);
  for (int64_t j = 0; j < n; j += IO::W) {
    const int64_t w = std::min(IO::W, n - j);
    sums = sums + IO::first(IO::load(x + j, w), w);
  }
  mean = IO::total(sums) / static_cast<scalar_t>(n);
  Vec squares(0);
  const Vec vmean(mean);
  for (int64_t j = 0; j < n; j += IO::W) {
    const int64_t w = std::min(IO::W, n - j);
    const Vec d = IO::load(x + j, w) - vmean;
    squares = squares + IO::first(d * d, w);
  }
  const double variance = static_cast<double>(IO::total(squares)) / static_cast<double>(n);
  rstd = static_cast<scalar_t>(1.0 / std::sqrt(variance + eps));
}

// The cell's parameters typed, with the masks of row r.
template <typename scalar_t>
struct TypedCell {
  bool layer_norm;
  const scalar_t *gamma_hh, *gamma_c, *beta_c, *mask_c, *mask_h;
  scalar_t rate_c, rate_h;
  explicit TypedCell(const LnCellParams& p)
      : layer_norm(p.layer_norm), gamma_hh(static_cast<const scalar_t*>(p.gamma_hh)),
        gamma_c(static_cast<const scalar_t*>(p.gamma_c)), beta_c(static_cast<const scalar_t*>(p.beta_c)),
        mask_c(static_cast<const scalar_t*>(p.mask_c)), mask_h(static_cast<const scalar_t*>(p.mask_h)),
        rate_c(static_cast<scalar_t>(p.rate_c)), rate_h(static_cast<scalar_t>(p.rate_h)) {}
  const scalar_t* mask_c_row(int64_t r, int64_t H) const { return mask_c != nullptr ? mask_c + r * H : nullptr; }
  const scalar_t* mask_h_row(int64_t r, int64_t H) const { return mask_h != nullptr ? mask_h + r * H : nullptr; }
};

template <typename scalar_t, typename IO>
void ln_rows_forward_typed(const LnRowsForwardArgs& a) {
  using Vec = typename IO::Vec;
  const int64_t H = a.hidden, G = 4 * H;
  const TypedCell<scalar_t> cell(a.cell);
  const bool layer_norm = cell.layer_norm;
  for (int64_t r = 0; r < a.rows; ++r) {
    scalar_t* gates = static_cast<scalar_t*>(a.gates) + r * G;
    scalar_t* hh = layer_norm ? static_cast<scalar_t*>(a.hh) + r * G : nullptr;
    const scalar_t* c_prev = static_cast<const scalar_t*>(a.c_prev) + r * H;
    const scalar_t* h_prev = static_cast<const scalar_t*>(a.h_prev) + r * H;
    const scalar_t *mask_c = cell.mask_c_row(r, H), *mask_h = cell.mask_h_row(r, H);
    scalar_t* c = static_cast<scalar_t*>(a.c) + r * H;
    scalar_t* h = static_cast<scalar_t*>(a.h) + r * H;
    scalar_t mean_hh = 0, rstd_hh = 1;
    if (layer_norm) row_moments<scalar_t, IO>(hh, G, a.eps, mean_hh, rstd_hh);
    // The gates and c~ (into c for now).
    for (int64_t j = 0; j < H; j += IO::W) {
      const int64_t w = std::min(IO::W, H - j);
      Vec pre[4], act[4];
      for (int k = 0; k < 4; ++k) {
        pre[k] = IO::load(gates + k * H + j, w);
        if (layer_norm) {
          const Vec x_hat = (IO::load(hh + k * H + j, w) - Vec(mean_hh)) * Vec(rstd_hh);
          IO::store(hh + k * H + j, x_hat, w);
          pre[k] = pre[k] + IO::load(cell.gamma_hh + k * H + j, w) * x_hat;
        }
      }
      Vec c_candidate;
      ln_lstm_gates_point(pre[0], pre[1], pre[2], pre[3], IO::load(c_prev + j, w), act[0], act[1], act[2], act[3],
                          c_candidate);
      for (int k = 0; k < 4; ++k) IO::store(gates + k * H + j, act[k], w);
      IO::store(c + j, c_candidate, w);
    }
    scalar_t mean_c = 0, rstd_c = 1;
    if (layer_norm) row_moments<scalar_t, IO>(c, H, a.eps, mean_c, rstd_c);
    for (int64_t j = 0; j < H; j += IO::W) {
      const int64_t w = std::min(IO::W, H - j);
      const Vec c_candidate = IO::load(c + j, w);
      Vec y = c_candidate;
      if (layer_norm) {
        y = (c_candidate - Vec(mean_c)) * Vec(rstd_c) * IO::load(cell.gamma_c + j, w) + IO::load(cell.beta_c + j, w);
      }
      const Vec h_candidate = IO::load(gates + 3 * H + j, w) * lstm_tanh(y);
      IO::store(c + j, zoneout_point(c_candidate, IO::load(c_prev + j, w), IO::weight(mask_c, cell.rate_c, j, w)), w);
      IO::store(h + j, zoneout_point(h_candidate, IO::load(h_prev + j, w), IO::weight(mask_h, cell.rate_h, j, w)), w);
    }
    if (layer_norm) {
      scalar_t* stats = static_cast<scalar_t*>(a.stats) + r * 3;
      stats[0] = rstd_hh;
      stats[1] = mean_c;
      stats[2] = rstd_c;
    }
  }
}

template <typename scalar_t, typename IO>
void ln_rows_backward_typed(const LnRowsBackwardArgs& a) {
  using Vec = typename IO::Vec;
  const int64_t H = a.hidden, G = 4 * H;
  const TypedCell<scalar_t> cell(a.cell);
  const bool layer_norm = cell.layer_norm;
  auto* grad_gamma_hh = static_cast<scalar_t*>(a.grad_gamma_hh);
  auto* grad_gamma_c = static_cast<scalar_t*>(a.grad_gamma_c);
  auto* grad_beta_c = static_cast<scalar_t*>(a.grad_beta_c);
  const Vec one(1);
  for (int64_t r = 0; r < a.rows; ++r) {
    const scalar_t* gates = static_cast<const scalar_t*>(a.gates) + r * G;
    const scalar_t* c_prev = static_cast<const scalar_t*>(a.c_prev) + r * H;
    const scalar_t* grad_h = static_cast<const scalar_t*>(a.grad_h) + r * H;
    const scalar_t *mask_c = cell.mask_c_row(r, H), *mask_h = cell.mask_h_row(r, H);
    scalar_t* grad_c = static_cast<scalar_t*>(a.grad_c) + r * H;
    scalar_t* grad_pre = static_cast<scalar_t*>(a.grad_pre) + r * G;
    scalar_t* grad_h_prev = a.grad_h_prev != nullptr ? static_cast<scalar_t*>(a.grad_h_prev) + r * H : nullptr;
    scalar_t mean_c = 0, rstd_c = 1;
    if (layer_norm) {
      const scalar_t* stats = static_cast<const scalar_t*>(a.stats) + r * 3;
      mean_c = stats[1];
      rstd_c = stats[2];
    }
    // c~ and, with layer norm, its x^ (recomputed from the saved gates).
    const auto candidate = [&](int64_t j, int64_t w, Vec& c_candidate, Vec& x_c) {
      c_candidate = ln_lstm_candidate(IO::load(gates + j, w), IO::load(gates + H + j, w),
                                      IO::load(gates + 2 * H + j, w), IO::load(c_prev + j, w));
      x_c = (c_candidate - Vec(mean_c)) * Vec(rstd_c);
    };
    // Pass 1: o's gradient, and the gradient of c~'s normalized value
    // (into grad_pre's i block for now) with its row sums.
    Vec sum_gx(0), sum_gx_x(0);
    for (int64_t j = 0; j < H; j += IO::W) {
      const int64_t w = std::min(IO::W, H - j);
      Vec c_candidate, x_c;
      candidate(j, w, c_candidate, x_c);
      const Vec gh = IO::load(grad_h + j, w);
      const Vec d_h = IO::weight(mask_h, cell.rate_h, j, w);
      if (grad_h_prev != nullptr) IO::store(grad_h_prev + j, IO::load(grad_h_prev + j, w) + d_h * gh, w);
      Vec y = c_candidate;
      if (layer_norm) y = x_c * IO::load(cell.gamma_c + j, w) + IO::load(cell.beta_c + j, w);
      Vec grad_pre_o, grad_y;
      ln_lstm_output_backward_point(IO::load(gates + 3 * H + j, w), y, (one - d_h) * gh, grad_pre_o, grad_y);
      IO::store(grad_pre + 3 * H + j, grad_pre_o, w);
      if (layer_norm) {
        IO::store(grad_gamma_c + j, IO::load(grad_gamma_c + j, w) + grad_y * x_c, w);
        IO::store(grad_beta_c + j, IO::load(grad_beta_c + j, w) + grad_y, w);
        const Vec gx = grad_y * IO::load(cell.gamma_c + j, w);
        sum_gx = sum_gx + IO::first(gx, w);
        sum_gx_x = sum_gx_x + IO::first(gx * x_c, w);
        IO::store(grad_pre + j, gx, w);
      } else {
        IO::store(grad_pre + j, grad_y, w);
      }
    }
    // Pass 2: c~'s gradient, then those of i, f, g and of c_prev.
    const Vec mean_gx(IO::total(sum_gx) / static_cast<scalar_t>(H)),
        mean_gx_x(IO::total(sum_gx_x) / static_cast<scalar_t>(H));
    for (int64_t j = 0; j < H; j += IO::W) {
      const int64_t w = std::min(IO::W, H - j);
      Vec grad_candidate = IO::load(grad_pre + j, w);
      if (layer_norm) {
        Vec c_candidate, x_c;
        candidate(j, w, c_candidate, x_c);
        grad_candidate = layer_norm_backward_point(grad_candidate, x_c, Vec(rstd_c), mean_gx, mean_gx_x);
      }
      const Vec gc = IO::load(grad_c + j, w);
      const Vec d_c = IO::weight(mask_c, cell.rate_c, j, w);
      grad_candidate = grad_candidate + (one - d_c) * gc;
      Vec gi, gf, gg, gc_prev;
      ln_lstm_cell_backward_point(IO::load(gates + j, w), IO::load(gates + H + j, w), IO::load(gates + 2 * H + j, w),
                                  IO::load(c_prev + j, w), grad_candidate, gi, gf, gg, gc_prev);
      IO::store(grad_pre + j, gi, w);
      IO::store(grad_pre + H + j, gf, w);
      IO::store(grad_pre + 2 * H + j, gg, w);
      IO::store(grad_c + j, gc_prev + d_c * gc, w);
    }
    if (!layer_norm) continue;
    // The recurrent product's layer norm: gain gradient, then the product's.
    const scalar_t* x_hh = static_cast<const scalar_t*>(a.hh_norm) + r * G;
    scalar_t* grad_hh = static_cast<scalar_t*>(a.grad_hh) + r * G;
    const scalar_t rstd_hh = static_cast<const scalar_t*>(a.stats)[r * 3];
    Vec sum_g(0), sum_g_x(0);
    for (int64_t j = 0; j < G; j += IO::W) {
      const int64_t w = std::min(IO::W, G - j);
      const Vec ga = IO::load(grad_pre + j, w), x = IO::load(x_hh + j, w);
      IO::store(grad_gamma_hh + j, IO::load(grad_gamma_hh + j, w) + ga * x, w);
      const Vec gx = ga * IO::load(cell.gamma_hh + j, w);
      sum_g = sum_g + IO::first(gx, w);
      sum_g_x = sum_g_x + IO::first(gx * x, w);
    }
    const Vec mean_g(IO::total(sum_g) / static_cast<scalar_t>(G)),
        mean_g_x(IO::total(sum_g_x) / static_cast<scalar_t>(G));
    for (int64_t j = 0; j < G; j += IO::W) {
      const int64_t w = std::min(IO::W, G - j);
      const Vec gx = IO::load(grad_pre + j, w) * IO::load(cell.gamma_hh + j, w);
      IO::store(grad_hh + j, layer_norm_backward_point(gx, IO::load(x_hh + j, w), Vec(rstd_hh), mean_g, mean_g_x), w);
    }
  }
}

template <typename scalar_t, typename IO>
void layer_norm_rows_typed(const LnInputArgs& a) {
  using Vec = typename IO::Vec;
  const int64_t n = a.width;
  const auto* gamma = static_cast<const scalar_t*>(a.gamma);
  const auto* beta = static_cast<const scalar_t*>(a.beta);
  for (int64_t r = 0; r < a.rows; ++r) {
    const scalar_t* x = static_cast<const scalar_t*>(a.x) + r * n;
    scalar_t* out = static_cast<scalar_t*>(a.out) + r * n;
    scalar_t mean, rstd;
    row_moments<scalar_t, IO>(x, n, a.eps, mean, rstd);
    for (int64_t j = 0; j < n; j += IO::W) {
      const int64_t w = std::min(IO::W, n - j);
      Vec y = (IO::load(x + j, w) - Vec(mean)) * Vec(rstd) * IO::load(gamma + j, w);
      if (beta != nullptr) y = y + IO::load(beta + j, w);
      IO::store(out + j, y, w);
    }
    static_cast<scalar_t*>(a.mean)[r] = mean;
    static_cast<scalar_t*>(a.rstd)[r] = rstd;
  }
}

template <typename scalar_t, typename IO>
void layer_norm_rows_backward_typed(const LnInputBackwardArgs& a) {
  using Vec = typename IO::Vec;
  const int64_t n = a.width;
  const auto* gamma = static_cast<const scalar_t*>(a.gamma);
  auto* grad_gamma = static_cast<scalar_t*>(a.grad_gamma);
  auto* grad_beta = static_cast<scalar_t*>(a.grad_beta);
  for (int64_t r = 0; r < a.rows; ++r) {
    const scalar_t* x = static_cast<const scalar_t*>(a.x) + r * n;
    const scalar_t* grad_out = static_cast<const scalar_t*>(a.grad_out) + r * n;
    scalar_t* grad_x = static_cast<scalar_t*>(a.grad_x) + r * n;
    const Vec mean(static_cast<const scalar_t*>(a.mean)[r]), rstd(static_cast<const scalar_t*>(a.rstd)[r]);
    Vec sum_g(0), sum_g_x(0);
    for (int64_t j = 0; j < n; j += IO::W) {
      const int64_t w = std::min(IO::W, n - j);
      const Vec go = IO::load(grad_out + j, w), x_hat = (IO::load(x + j, w) - mean) * rstd;
      IO::store(grad_gamma + j, IO::load(grad_gamma + j, w) + go * x_hat, w);
      if (grad_beta != nullptr) IO::store(grad_beta + j, IO::load(grad_beta + j, w) + go, w);
      const Vec g = go * IO::load(gamma + j, w);
      sum_g = sum_g + IO::first(g, w);
      sum_g_x = sum_g_x + IO::first(g * x_hat, w);
    }
    const Vec mean_g(IO::total(sum_g) / static_cast<scalar_t>(n)),
        mean_g_x(IO::total(sum_g_x) / static_cast<scalar_t>(n));
    for (int64_t j = 0; j < n; j += IO::W) {
      const int64_t w = std::min(IO::W, n - j);
      const Vec x_hat = (IO::load(x + j, w) - mean) * rstd;
      const Vec g = IO::load(grad_out + j, w) * IO::load(gamma + j, w);
      IO::store(grad_x + j, layer_norm_backward_point(g, x_hat, rstd, mean_g, mean_g_x), w);
    }
  }
}

void layer_norm_rows(const LnInputArgs& args) {
  AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_layer_norm_rows", [&] {
    if (narrow_rows<scalar_t>(args.width)) {
      layer_norm_rows_typed<scalar_t, ScalarRowIO<scalar_t>>(args);
    } else {
      layer_norm_rows_typed<scalar_t, RowIO<scalar_t>>(args);
    }
  });
}

void layer_norm_rows_backward(const LnInputBackwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_layer_norm_rows_backward", [&] {
    if (narrow_rows<scalar_t>(args.width)) {
      layer_norm_rows_backward_typed<scalar_t, ScalarRowIO<scalar_t>>(args);
    } else {
      layer_norm_rows_backward_typed<scalar_t, RowIO<scalar_t>>(args);
    }
  });
}

// Philox4x32-10 (Salmon et al. 2011), the counter-based generator of
// torch's CUDA random ops, over kDraws counters at once in plain arrays that
// the compiler vectorizes (32 x 32 -> 64-bit products per lane): 16 draws,
// 64 mask elements, a step.
#if (defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)) && (defined(__x86_64__) || defined(_M_X64))
// Philox4x32-10 in AVX2 registers, 8 draws a vector and 4 vectors at a time
// (independent chains hide the multiplies' latency): the scalar loop below
// leaves its 32 x 32 -> 64-bit products to the compiler, which gave 2.9 ns
// an element here against 1.5 ns. The same words in the same order: each
// draw's four words are transposed back to 4 consecutive elements.
inline void philox_mulhilo(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                         // lanes 0, 2, 4, 6 as 64 bits
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Mask elements of draws [first, first + 32) into out (128 elements), as
// 0/1 floats; the draws' counters must share their high 32 bits.
inline void philox_block_avx2(uint64_t first, uint64_t seed, uint32_t threshold, float* out) {
  constexpr int kVectors = 4;
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i c0[kVectors], c1[kVectors], c2[kVectors], c3[kVectors];
  for (int v = 0; v < kVectors; ++v) {
    c0[v] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first))),
                             _mm256_add_epi32(lane, _mm256_set1_epi32(8 * v)));
    c1[v] = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first >> 32)));
    c2[v] = c3[v] = _mm256_setzero_si256();
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0)), key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int v = 0; v < kVectors; ++v) {
      __m256i hi0, lo0, hi1, lo1;
      philox_mulhilo(c0[v], m0, hi0, lo0);
      philox_mulhilo(c2[v], m1, hi1, lo1);
      c0[v] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[v]), key0);
      c2[v] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[v]), key1);
      c1[v] = lo1;
      c3[v] = lo0;
    }
    k0 += 0x9E3779B9;
    k1 += 0xBB67AE85;
  }
  const __m256i limit = _mm256_set1_epi32(static_cast<int>(threshold));
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int v = 0; v < kVectors; ++v) {
    // Lane d of c_k is word k of draw d; element 4 d + k wants it.
    const __m256i t0 = _mm256_unpacklo_epi32(c0[v], c1[v]), t1 = _mm256_unpackhi_epi32(c0[v], c1[v]);
    const __m256i t2 = _mm256_unpacklo_epi32(c2[v], c3[v]), t3 = _mm256_unpackhi_epi32(c2[v], c3[v]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i words[4] = {_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u2, u3, 0x20),
                              _mm256_permute2x128_si256(u0, u1, 0x31), _mm256_permute2x128_si256(u2, u3, 0x31)};
    for (int k = 0; k < 4; ++k) {
      // (word >> 8) < threshold, both below 2^24: a signed compare is exact.
      const __m256i keep = _mm256_cmpgt_epi32(limit, _mm256_srli_epi32(words[k], 8));
      _mm256_storeu_ps(out + 32 * v + 8 * k, _mm256_and_ps(_mm256_castsi256_ps(keep), one));
    }
  }
}
#define LSTM_EXT_PHILOX_AVX2 1
#endif

template <typename scalar_t>
void philox_mask_typed(const PhiloxMaskArgs& a) {
  constexpr int64_t kDraws = 16;
  auto* out = static_cast<scalar_t*>(a.out);
  const uint32_t key0 = static_cast<uint32_t>(a.seed), key1 = static_cast<uint32_t>(a.seed >> 32);
  int64_t first = a.begin / 4;
#ifdef LSTM_EXT_PHILOX_AVX2
  // Whole blocks of 32 draws through the vector kernel (float straight to
  // the mask, other types through a float block), the rest below.
  constexpr int64_t kBlockDraws = 32;
  alignas(32) float block[4 * kBlockDraws];
  for (; (first + kBlockDraws) * 4 <= a.end && (first >> 32) == ((first + kBlockDraws - 1) >> 32);
       first += kBlockDraws) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      philox_block_avx2(static_cast<uint64_t>(first), a.seed, a.threshold, out + first * 4);
    } else {
      philox_block_avx2(static_cast<uint64_t>(first), a.seed, a.threshold, block);
      for (int64_t e = 0; e < 4 * kBlockDraws; ++e) out[first * 4 + e] = static_cast<scalar_t>(block[e]);
    }
  }
  // The last part block too, its draws past the end computed and dropped
  // (each draw depends on its counter only): the scalar loop below had been
  // half of a mask's time at the course's size (1,500 elements).
  if (first * 4 < a.end && (first >> 32) == ((first + kBlockDraws - 1) >> 32)) {
    philox_block_avx2(static_cast<uint64_t>(first), a.seed, a.threshold, block);
    for (int64_t e = 0; first * 4 + e < a.end; ++e) out[first * 4 + e] = static_cast<scalar_t>(block[e]);
    first += kBlockDraws;
  }
#endif
  for (; first * 4 < a.end; first += kDraws) {
    uint32_t c0[kDraws], c1[kDraws], c2[kDraws], c3[kDraws];
    for (int64_t d = 0; d < kDraws; ++d) {
      const uint64_t counter = static_cast<uint64_t>(first + d);
      c0[d] = static_cast<uint32_t>(counter);
      c1[d] = static_cast<uint32_t>(counter >> 32);
      c2[d] = 0;
      c3[d] = 0;
    }
    uint32_t k0 = key0, k1 = key1;
    for (int round = 0; round < 10; ++round) {
      for (int64_t d = 0; d < kDraws; ++d) {
        const uint64_t p0 = uint64_t(0xD2511F53) * c0[d], p1 = uint64_t(0xCD9E8D57) * c2[d];
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[d] ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[d] ^ k1;
        c1[d] = static_cast<uint32_t>(p1);
        c3[d] = static_cast<uint32_t>(p0);
        c0[d] = n0;
        c2[d] = n2;
      }
      k0 += 0x9E3779B9;
      k1 += 0xBB67AE85;
    }
    const int64_t base = first * 4, count = std::min<int64_t>(4 * kDraws, a.end - base);
    scalar_t values[4 * kDraws];
    for (int64_t d = 0; d < kDraws; ++d) {
      const uint32_t words[4] = {c0[d], c1[d], c2[d], c3[d]};
      for (int k = 0; k < 4; ++k) values[4 * d + k] = scalar_t((words[k] >> 8) < a.threshold ? 1.0f : 0.0f);
    }
    std::copy(values, values + count, out + base);
  }
}

void philox_mask(const PhiloxMaskArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, args.dtype, "lstm_ext_philox_mask",
                                  [&] { philox_mask_typed<scalar_t>(args); });
}

// Zoneout without layer norm on rows narrower than a SIMD vector (the
// course's H = 3): every element is then independent of its row, so
// for_each_element takes a vector of rows at a time, as the LSTM's pointwise
// pass does, instead of the row pass's scalar loop. The formulas are the row
// pass's, in its order.

// Zoneout's d as a stream: the mask's rows, or the rate in a row of stride 0.
template <typename scalar_t>
Stream<const scalar_t> zoneout_stream(const void* mask, double rate, int64_t hidden,
                                      std::vector<scalar_t>& constant) {
  if (mask != nullptr) return {static_cast<const scalar_t*>(mask), hidden};
  constant.assign(static_cast<size_t>(hidden), static_cast<scalar_t>(rate));
  return {constant.data(), 0};
}

template <typename scalar_t>
void zoneout_rows_forward_narrow(const LnRowsForwardArgs& a) {
  using Vec = typename VecIO<scalar_t>::Vec;
  const int64_t H = a.hidden, G = 4 * H;
  auto* gates = static_cast<scalar_t*>(a.gates);
  std::vector<scalar_t> rate_c, rate_h;
  const std::array<Stream<const scalar_t>, 8> in{
      {{gates, G}, {gates + H, G}, {gates + 2 * H, G}, {gates + 3 * H, G},
       {static_cast<const scalar_t*>(a.c_prev), H}, {static_cast<const scalar_t*>(a.h_prev), H},
       zoneout_stream<scalar_t>(a.cell.mask_c, a.cell.rate_c, H, rate_c),
       zoneout_stream<scalar_t>(a.cell.mask_h, a.cell.rate_h, H, rate_h)}};
  const std::array<Stream<scalar_t>, 6> out{{{gates, G}, {gates + H, G}, {gates + 2 * H, G}, {gates + 3 * H, G},
                                             {static_cast<scalar_t*>(a.c), H}, {static_cast<scalar_t*>(a.h), H}}};
  for_each_element<scalar_t, 8, 6>(0, a.rows, H, in, out, [](const Vec* x, Vec* y) {
    Vec c_candidate;
    ln_lstm_gates_point(x[0], x[1], x[2], x[3], x[4], y[0], y[1], y[2], y[3], c_candidate);
    const Vec h_candidate = y[3] * lstm_tanh(c_candidate);
    y[4] = zoneout_point(c_candidate, x[4], x[6]);
    y[5] = zoneout_point(h_candidate, x[5], x[7]);
  });
}

template <typename scalar_t>
void zoneout_rows_backward_narrow(const LnRowsBackwardArgs& a) {
  using Vec = typename VecIO<scalar_t>::Vec;
  const int64_t H = a.hidden, G = 4 * H;
  const auto* gates = static_cast<const scalar_t*>(a.gates);
  auto* grad_pre = static_cast<scalar_t*>(a.grad_pre);
  auto* grad_c = static_cast<scalar_t*>(a.grad_c);
  std::vector<scalar_t> rate_c, rate_h, unused;  // unused: h_prev's share when no zoneout of h asks for it
  if (a.grad_h_prev == nullptr) unused.assign(static_cast<size_t>(a.rows * H), scalar_t(0));
  auto* grad_h_prev = a.grad_h_prev != nullptr ? static_cast<scalar_t*>(a.grad_h_prev) : unused.data();
  const std::array<Stream<const scalar_t>, 10> in{
      {{gates, G}, {gates + H, G}, {gates + 2 * H, G}, {gates + 3 * H, G},
       {static_cast<const scalar_t*>(a.c_prev), H}, {static_cast<const scalar_t*>(a.grad_h), H}, {grad_c, H},
       zoneout_stream<scalar_t>(a.cell.mask_c, a.cell.rate_c, H, rate_c),
       zoneout_stream<scalar_t>(a.cell.mask_h, a.cell.rate_h, H, rate_h), {grad_h_prev, H}}};
  const std::array<Stream<scalar_t>, 6> out{{{grad_pre, G}, {grad_pre + H, G}, {grad_pre + 2 * H, G},
                                             {grad_pre + 3 * H, G}, {grad_c, H}, {grad_h_prev, H}}};
  for_each_element<scalar_t, 10, 6>(0, a.rows, H, in, out, [](const Vec* x, Vec* y) {
    const Vec one(1);
    const Vec c_candidate = ln_lstm_candidate(x[0], x[1], x[2], x[4]);
    const Vec gh = x[5], gc = x[6], d_c = x[7], d_h = x[8];
    y[5] = x[9] + d_h * gh;
    Vec grad_y;
    ln_lstm_output_backward_point(x[3], c_candidate, (one - d_h) * gh, y[3], grad_y);
    Vec grad_c_prev;
    ln_lstm_cell_backward_point(x[0], x[1], x[2], x[4], grad_y + (one - d_c) * gc, y[0], y[1], y[2], grad_c_prev);
    y[4] = grad_c_prev + d_c * gc;
  });
}

void ln_rows_forward(const LnRowsForwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_ln_rows_forward", [&] {
    if (!args.cell.layer_norm && narrow_rows<scalar_t>(args.hidden)) {
      zoneout_rows_forward_narrow<scalar_t>(args);
    } else if (narrow_rows<scalar_t>(args.hidden)) {
      ln_rows_forward_typed<scalar_t, ScalarRowIO<scalar_t>>(args);
    } else {
      ln_rows_forward_typed<scalar_t, RowIO<scalar_t>>(args);
    }
  });
}

void ln_rows_backward(const LnRowsBackwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_ln_rows_backward", [&] {
    if (!args.cell.layer_norm && narrow_rows<scalar_t>(args.hidden)) {
      zoneout_rows_backward_narrow<scalar_t>(args);
    } else if (narrow_rows<scalar_t>(args.hidden)) {
      ln_rows_backward_typed<scalar_t, ScalarRowIO<scalar_t>>(args);
    } else {
      ln_rows_backward_typed<scalar_t, RowIO<scalar_t>>(args);
    }
  });
}

// Blocks of C of kOuterRows x kOuterColumns SIMD vectors (8 accumulators),
// each over all of K: per row of A two vector loads, per row of B four
// broadcasts, eight fused multiply-adds.
constexpr int kOuterRows = 2;
constexpr int kOuterColumns = 4;

template <typename scalar_t>
void outer_products_typed(const OuterProductArgs& p) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t W = Vec::size();
  const auto* A = static_cast<const scalar_t*>(p.a);
  const auto* B = static_cast<const scalar_t*>(p.b);
  auto* C = static_cast<scalar_t*>(p.c);
  alignas(64) scalar_t lanes[W];
  const int64_t a_extent = (p.k - 1) * p.lda + p.m;  // elements of A from its first to past its last
  for (int64_t m0 = 0; m0 < p.m; m0 += kOuterRows * W) {
    const int64_t m_count = std::min(kOuterRows * W, p.m - m0);
    for (int64_t n0 = 0; n0 < p.n; n0 += kOuterColumns) {
      const int64_t n_count = std::min<int64_t>(kOuterColumns, p.n - n0);
      Vec acc[kOuterRows][kOuterColumns];
      for (auto& row : acc)
        for (auto& v : row) v = Vec(scalar_t(0));
      for (int64_t k = 0; k < p.k; ++k) {
        const int64_t a_offset = k * p.lda + m0;
        // Whole vectors, reading past column M into the next rows (lanes that
        // are never stored), unless that would run past A's last element.
        Vec va[kOuterRows];
        for (int r = 0; r < kOuterRows; ++r) {
          const int64_t count = std::min<int64_t>(W, m_count - r * W), start = a_offset + r * W;
          va[r] = count <= 0                            ? Vec(scalar_t(0))
                  : count == W || start + W <= a_extent ? Vec::loadu(A + start)
                                                        : Vec::loadu(A + start, count);
        }
        const scalar_t* b = B + k * p.ldb + n0;
        for (int64_t c = 0; c < n_count; ++c) {
          const Vec vb(b[c]);
          for (int r = 0; r < kOuterRows; ++r) acc[r][c] = at::vec::fmadd(va[r], vb, acc[r][c]);
        }
      }
      for (int r = 0; r < kOuterRows; ++r) {
        for (int64_t c = 0; c < n_count; ++c) {
          acc[r][c].store(lanes);
          for (int64_t l = 0; l < std::min<int64_t>(W, m_count - r * W); ++l) {
            scalar_t& out = C[(m0 + r * W + l) * p.ldc + n0 + c];
            out = p.accumulate ? out + lanes[l] : lanes[l];
          }
        }
      }
    }
  }
}

void outer_products(const OuterProductArgs& args) {
  TORCH_CHECK(args.dtype == at::kFloat || args.dtype == at::kDouble, "outer_products: float or double only");
  AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_outer_products", [&] { outer_products_typed<scalar_t>(args); });
}

namespace {

// Rows of A [m0, m0 + R) against columns [n, n + Cols) of W^T: R x Cols
// accumulators in registers, so each vector of W loaded feeds R
// multiply-adds and each of A Cols. Each output's sum runs over k in order,
// vector by vector (the tail zero-filled), then across the vector.
template <typename scalar_t, int R, int Cols>
void row_dots_block(const RowDotsArgs& a, int64_t m0, int64_t n) {
  using Vec = Vectorized<scalar_t>;
  constexpr int64_t kWidth = Vec::size();
  const int64_t K = a.k;
  const auto* A = static_cast<const scalar_t*>(a.a) + m0 * a.lda;
  const auto* W = static_cast<const scalar_t*>(a.w) + n * a.ldw;
  Vec acc[Cols][R];
  for (int c = 0; c < Cols; ++c)
    for (int r = 0; r < R; ++r) acc[c][r] = Vec(scalar_t(0));
  int64_t k = 0;
  for (; k + kWidth <= K; k += kWidth) {
    Vec w[Cols];
    for (int c = 0; c < Cols; ++c) w[c] = Vec::loadu(W + c * a.ldw + k);
    for (int r = 0; r < R; ++r) {
      const Vec x = Vec::loadu(A + r * a.lda + k);
      for (int c = 0; c < Cols; ++c) acc[c][r] = at::vec::fmadd(x, w[c], acc[c][r]);
    }
  }
  if (k < K) {  // the tail, zero-filled
    const int64_t count = K - k;
    Vec w[Cols];
    for (int c = 0; c < Cols; ++c) w[c] = Vec::loadu(W + c * a.ldw + k, count);
    for (int r = 0; r < R; ++r) {
      const Vec x = Vec::loadu(A + r * a.lda + k, count);
      for (int c = 0; c < Cols; ++c) acc[c][r] = at::vec::fmadd(x, w[c], acc[c][r]);
    }
  }
  const auto* bias = static_cast<const scalar_t*>(a.bias);
  const auto* bias2 = static_cast<const scalar_t*>(a.bias2);
  auto* C = static_cast<scalar_t*>(a.c) + m0 * a.ldc + n;
  for (int c = 0; c < Cols; ++c) {
    for (int r = 0; r < R; ++r) {
      scalar_t sum = at::vec::vec_reduce_all<scalar_t>([](Vec& x, Vec& y) { return x + y; }, acc[c][r]);
      if (bias != nullptr) sum = bias[n + c] + (bias2 != nullptr ? bias2[n + c] : scalar_t(0)) + sum;
      if (a.accumulate) sum = C[r * a.ldc + c] + sum;
      C[r * a.ldc + c] = sum;
    }
  }
}

// 4 rows at a time; 4 columns with 32 vector registers (AVX-512: 16
// accumulators), else 2.
template <typename scalar_t, int Cols>
void row_dots_rows(const RowDotsArgs& a, int64_t m0, int64_t n) {
  switch (std::min<int64_t>(4, a.m - m0)) {
    case 1: row_dots_block<scalar_t, 1, Cols>(a, m0, n); break;
    case 2: row_dots_block<scalar_t, 2, Cols>(a, m0, n); break;
    case 3: row_dots_block<scalar_t, 3, Cols>(a, m0, n); break;
    default: row_dots_block<scalar_t, 4, Cols>(a, m0, n); break;
  }
}

template <typename scalar_t>
void row_dots_typed(const RowDotsArgs& a) {
  constexpr int64_t kCols = sizeof(Vectorized<scalar_t>) >= 64 ? 4 : 2;
  const int64_t groups = (a.n + kCols - 1) / kCols;
  // Groups of columns per task: enough multiply-adds to be worth a thread.
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, kCols * a.m * a.k));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t n = g * kCols, cols = std::min(kCols, a.n - n);
      // Every pass of 4 rows over the same columns of W, which stay in L1.
      for (int64_t m0 = 0; m0 < a.m; m0 += 4) {
        switch (cols) {
          case 1: row_dots_rows<scalar_t, 1>(a, m0, n); break;
          case 2: row_dots_rows<scalar_t, 2>(a, m0, n); break;
          case 3: row_dots_rows<scalar_t, 3>(a, m0, n); break;
          default: row_dots_rows<scalar_t, kCols>(a, m0, n); break;
        }
      }
    }
  });
}

}  // namespace

void row_dots(const RowDotsArgs& a) {
  if (a.m == 0 || a.n == 0) return;
  AT_DISPATCH_FLOATING_TYPES(a.dtype, "lstm_ext_row_dots", [&] { row_dots_typed<scalar_t>(a); });
}

void transpose(const TransposeArgs& a) {
  constexpr int64_t kBlock = 16;  // at::vec's 16 x 16 float transpose (two 8 x 8 ones below AVX-512)
  const int64_t row_blocks = (a.rows + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (kBlock * std::max<int64_t>(1, a.cols)));
  at::parallel_for(0, row_blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t r0 = block * kBlock, rows = std::min(kBlock, a.rows - r0);
      for (int64_t c0 = 0; c0 < a.cols; c0 += kBlock) {
        const int64_t cols = std::min(kBlock, a.cols - c0);
        const float* src = a.src + r0 * a.ld_src + c0;
        // bfloat16: the block transposed in float first, then rounded row by row.
        float block_t[kBlock * kBlock];
        float* dst = a.dst_bf16 != nullptr ? block_t : a.dst + c0 * a.ld_dst + r0;
        const int64_t ld_dst = a.dst_bf16 != nullptr ? kBlock : a.ld_dst;
        if (rows == kBlock && cols == kBlock) {
          at::vec::transpose_mxn<float, kBlock, kBlock>(src, a.ld_src, dst, ld_dst);
        } else {
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * a.ld_src + c];
        }
        if (a.dst_bf16 != nullptr) {
          for (int64_t c = 0; c < cols; ++c) at::vec::convert(block_t + c * kBlock, a.dst_bf16 + (c0 + c) * a.ld_dst + r0, rows);
        }
      }
    }
  });
}

#if defined(CPU_CAPABILITY_AVX512) && (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
// bf16_tile: blocks of up to kBf16Rows rows by the tile's vectors, every
// accumulator in a register (6 x 4 of them, 4 vectors of B, one broadcast of
// A: 29 of the 32). Per pair of k, a row's two A values are one broadcast
// 32-bit lane, and each dot-product instruction adds both products into 16
// float lanes.
#define LSTM_EXT_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))
constexpr int kBf16Rows = 6;

// A block's accumulators: C's values where the tile accumulates, else the
// vector's init (or zeros); each vector's mask of its columns. Then their
// store. A full vector loads and stores without its mask: the pointwise pass
// reads the block right after, and a masked store does not forward to that
// load on AMD's cores (the bfloat16 forward 4-6% faster on the AMD EPYC host).
template <int Rows, int Vectors, typename Args>
inline void start_block(const Args& p, int64_t r0, __m512 (&acc)[Rows][Vectors], __mmask16 (&mask)[Vectors]) {
  for (int v = 0; v < Vectors; ++v) {
    mask[v] = static_cast<__mmask16>((1u << p.columns[v]) - 1u);
    for (int r = 0; r < Rows; ++r) {
      const float* c = p.c[v] + (r0 + r) * p.ldc[v];
      const bool full = p.columns[v] == kBf16Vector;
      acc[r][v] = p.accumulate[v]        ? (full ? _mm512_loadu_ps(c) : _mm512_maskz_loadu_ps(mask[v], c))
                  : p.init[v] != nullptr ? _mm512_maskz_loadu_ps(mask[v], p.init[v])
                                         : _mm512_setzero_ps();
    }
  }
}

template <int Rows, int Vectors, typename Args>
inline void finish_block(const Args& p, int64_t r0, const __m512 (&acc)[Rows][Vectors],
                         const __mmask16 (&mask)[Vectors]) {
  for (int v = 0; v < Vectors; ++v) {
    if (p.columns[v] == kBf16Vector) {
      for (int r = 0; r < Rows; ++r) _mm512_storeu_ps(p.c[v] + (r0 + r) * p.ldc[v], acc[r][v]);
    } else {
      for (int r = 0; r < Rows; ++r) _mm512_mask_storeu_ps(p.c[v] + (r0 + r) * p.ldc[v], mask[v], acc[r][v]);
    }
  }
}

// acc += A[Rows, k] @ B for bf16_block: A's rows at stride lda, B the
// tile's vectors.
template <int Rows, int Vectors>
LSTM_EXT_BF16_TARGET inline __attribute__((always_inline)) void bf16_accumulate(
    __m512 (&acc)[Rows][Vectors], const c10::BFloat16* a_rows, int64_t lda, const c10::BFloat16* const (&b_vectors)[4],
    int64_t k) {
  const auto* a = reinterpret_cast<const uint16_t*>(a_rows);
  const int64_t pairs = k / 2;
  for (int64_t kp = 0; kp < pairs; ++kp) {
    __m512i b[Vectors];
    for (int v = 0; v < Vectors; ++v) b[v] = _mm512_loadu_si512(b_vectors[v] + kp * 2 * kBf16Vector);
    for (int r = 0; r < Rows; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * kp, sizeof(pair));
      const __m512i va = _mm512_set1_epi32(pair);
      for (int v = 0; v < Vectors; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)va, (__m512bh)b[v]);
    }
  }
  if (k % 2 != 0) {  // the last k alone: its pair's second value zero (so is B's)
    __m512i b[Vectors];
    for (int v = 0; v < Vectors; ++v) b[v] = _mm512_loadu_si512(b_vectors[v] + pairs * 2 * kBf16Vector);
    for (int r = 0; r < Rows; ++r) {
      const __m512i va = _mm512_set1_epi32(static_cast<int32_t>(a[r * lda + k - 1]));
      for (int v = 0; v < Vectors; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)va, (__m512bh)b[v]);
    }
  }
}

template <int Rows, int Vectors>
LSTM_EXT_BF16_TARGET void bf16_block(const Bf16TileArgs& p, int64_t r0) {
  __m512 acc[Rows][Vectors];
  __mmask16 mask[Vectors];
  start_block<Rows, Vectors>(p, r0, acc, mask);
  bf16_accumulate<Rows, Vectors>(acc, p.a + r0 * p.lda, p.lda, p.b, p.k);
  if (p.k2 > 0) bf16_accumulate<Rows, Vectors>(acc, p.a2 + r0 * p.lda2, p.lda2, p.b2, p.k2);
  finish_block<Rows, Vectors>(p, r0, acc, mask);
}

// acc += A[Rows, k] @ B for float_block.
template <int Rows, int Vectors>
inline __attribute__((always_inline)) void float_accumulate(__m512 (&acc)[Rows][Vectors], const float* a, int64_t lda,
                                                            const float* const (&b_vectors)[4], int64_t k) {
  for (int64_t kk = 0; kk < k; ++kk) {
    __m512 b[Vectors];
    for (int v = 0; v < Vectors; ++v) b[v] = _mm512_loadu_ps(b_vectors[v] + kk * kBf16Vector);
    for (int r = 0; r < Rows; ++r) {
      const __m512 va = _mm512_set1_ps(a[r * lda + kk]);
      for (int v = 0; v < Vectors; ++v) acc[r][v] = _mm512_fmadd_ps(va, b[v], acc[r][v]);
    }
  }
}

// float_tile's block: as bf16_block, one broadcast and one FMA per row,
// vector and k.
template <int Rows, int Vectors>
void float_block(const FloatTileArgs& p, int64_t r0) {
  __m512 acc[Rows][Vectors];
  __mmask16 mask[Vectors];
  start_block<Rows, Vectors>(p, r0, acc, mask);
  float_accumulate<Rows, Vectors>(acc, p.a + r0 * p.lda, p.lda, p.b, p.k);
  if (p.k2 > 0) float_accumulate<Rows, Vectors>(acc, p.a2 + r0 * p.lda2, p.lda2, p.b2, p.k2);
  finish_block<Rows, Vectors>(p, r0, acc, mask);
}

// Rounds 16 floats (those in mask) to bfloat16 (nearest even), storing the
// bfloat16 values and (write_back) their float values back in h.
LSTM_EXT_BF16_TARGET inline void bf16_round_vector(float* h, uint16_t* out, __mmask16 mask, bool write_back) {
  const __m256i rounded = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, h));
  _mm256_mask_storeu_epi16(out, mask, rounded);
  if (write_back) {
    _mm512_mask_storeu_ps(h, mask, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(rounded), 16)));
  }
}

template <typename Args>
using TileBlock = void (*)(const Args&, int64_t);
using Bf16Block = TileBlock<Bf16TileArgs>;
using FloatBlock = TileBlock<FloatTileArgs>;

template <int Vectors>
constexpr std::array<Bf16Block, kBf16Rows> bf16_blocks() {
  return {bf16_block<1, Vectors>, bf16_block<2, Vectors>, bf16_block<3, Vectors>,
          bf16_block<4, Vectors>, bf16_block<5, Vectors>, bf16_block<6, Vectors>};
}

template <int Vectors>
constexpr std::array<FloatBlock, kBf16Rows> float_blocks() {
  return {float_block<1, Vectors>, float_block<2, Vectors>, float_block<3, Vectors>,
          float_block<4, Vectors>, float_block<5, Vectors>, float_block<6, Vectors>};
}

// A tile's rows in blocks of as even a height as kBf16Rows allows (32 rows:
// 6, 6, 5, 5, 5, 5 rather than five of 6 and one of 2, which runs at a third
// of the rate).
template <typename Args>
void run_tile(const Args& p, const std::array<TileBlock<Args>, kBf16Rows> (&blocks)[4]) {
  TORCH_INTERNAL_ASSERT(p.vectors >= 1 && p.vectors <= 4, "tile: 1 to 4 vectors");
  const int64_t count = (p.rows + kBf16Rows - 1) / kBf16Rows;
  for (int64_t b = 0, r0 = 0; b < count; ++b) {
    const int64_t rows = (p.rows - r0 + (count - b) - 1) / (count - b);
    blocks[p.vectors - 1][rows - 1](p, r0);
    r0 += rows;
  }
}

LSTM_EXT_BF16_TARGET void bf16_round(const Bf16RoundArgs& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    float* h = p.h + r * p.ld_h;
    auto* out = reinterpret_cast<uint16_t*>(p.out + r * p.ld_out);
    for (int64_t j = 0; j < p.width; j += 16) {
      const __mmask16 mask = static_cast<__mmask16>((1u << std::min<int64_t>(16, p.width - j)) - 1u);
      bf16_round_vector(h + j, out + j, mask, p.write_back);
    }
  }
}

void bf16_tile(const Bf16TileArgs& p) {
  static const std::array<Bf16Block, kBf16Rows> blocks[4] = {bf16_blocks<1>(), bf16_blocks<2>(), bf16_blocks<3>(),
                                                             bf16_blocks<4>()};
  run_tile(p, blocks);
}

void float_tile(const FloatTileArgs& p) {
  static const std::array<FloatBlock, kBf16Rows> blocks[4] = {float_blocks<1>(), float_blocks<2>(),
                                                              float_blocks<3>(), float_blocks<4>()};
  run_tile(p, blocks);
}
#endif

#if defined(CPU_CAPABILITY_AVX2) && (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
// float_tile under the AVX2 kernels, on the same packed vectors of 16
// columns (two 8-float halves): one vector at a time, in blocks of up to six
// rows, so 12 accumulators, the vector's two halves and one broadcast take 15
// of the 16 registers, and 12 independent FMAs per k cover the FMA latency.
// It replaces ATen's brgemm call per task and step, and with it the input
// projection moves into the loop (the AVX512 kernels' reasons,
// docs/design.md). A/B in one process on an AVX2-only AMD EPYC (Zen 2, 2
// threads, T=100, brgemm's time / the tile's): LSTM forward 1.06 / 1.34 /
// 1.29 at B/H 16/128, 32/256, 64/512, forward+backward 1.03 / 1.08 / 1.05;
// GRU forward 1.03 / 1.21 / 1.16.
constexpr int kAvx2Rows = 6;

// Lanes [0, count) of 8 set (count clamped to [0, 8]).
inline __m256i avx2_lane_mask(int64_t count) {
  const int32_t n = static_cast<int32_t>(std::max<int64_t>(0, std::min<int64_t>(8, count)));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// acc += A[Rows, k] @ B for one vector of B. The accumulators are named
// variables, not an array: GCC 12 kept an array of them in memory, a store
// after every FMA, at half this loop's speed.
#define LSTM_EXT_AVX2_ROW(r)                                  \
  if constexpr (Rows > r) {                                   \
    const __m256 va = _mm256_broadcast_ss(a + r * lda + kk);  \
    c##r##0 = _mm256_fmadd_ps(va, b0, c##r##0);               \
    c##r##1 = _mm256_fmadd_ps(va, b1, c##r##1);               \
  }
template <int Rows>
inline __attribute__((always_inline)) void avx2_float_accumulate(__m256 (&acc)[Rows][2], const float* a, int64_t lda,
                                                                 const float* b, int64_t k) {
  static_assert(Rows >= 1 && Rows <= kAvx2Rows);
  // Row r's accumulators (zeros past Rows, which the loop never touches).
  const auto row = [&](int r, int h) { return r < Rows ? acc[r < Rows ? r : 0][h] : _mm256_setzero_ps(); };
  __m256 c00 = row(0, 0), c01 = row(0, 1), c10 = row(1, 0), c11 = row(1, 1), c20 = row(2, 0), c21 = row(2, 1);
  __m256 c30 = row(3, 0), c31 = row(3, 1), c40 = row(4, 0), c41 = row(4, 1), c50 = row(5, 0), c51 = row(5, 1);
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 b0 = _mm256_loadu_ps(b + kk * kBf16Vector);
    const __m256 b1 = _mm256_loadu_ps(b + kk * kBf16Vector + 8);
    LSTM_EXT_AVX2_ROW(0) LSTM_EXT_AVX2_ROW(1) LSTM_EXT_AVX2_ROW(2)
    LSTM_EXT_AVX2_ROW(3) LSTM_EXT_AVX2_ROW(4) LSTM_EXT_AVX2_ROW(5)
  }
  const __m256 out[kAvx2Rows][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < Rows; ++r) {
    acc[r][0] = out[r][0];
    acc[r][1] = out[r][1];
  }
}
#undef LSTM_EXT_AVX2_ROW

// Vector v of the tile for rows [r0, r0 + Rows). As on AVX512, a full vector
// loads and stores without masks (the pointwise pass reads it right after).
template <int Rows>
void avx2_float_block(const FloatTileArgs& p, int v, int64_t r0) {
  const int64_t columns = p.columns[v];
  const bool full = columns == kBf16Vector;
  __m256 acc[Rows][2];
  for (int r = 0; r < Rows; ++r) {
    const float* c = p.c[v] + (r0 + r) * p.ldc[v];
    for (int h = 0; h < 2; ++h) {
      const __m256i mask = avx2_lane_mask(columns - 8 * h);
      acc[r][h] = p.accumulate[v]     ? (full ? _mm256_loadu_ps(c + 8 * h) : _mm256_maskload_ps(c + 8 * h, mask))
                  : p.init[v] != nullptr ? _mm256_maskload_ps(p.init[v] + 8 * h, mask)
                                         : _mm256_setzero_ps();
    }
  }
  avx2_float_accumulate<Rows>(acc, p.a + r0 * p.lda, p.lda, p.b[v], p.k);
  if (p.k2 > 0) avx2_float_accumulate<Rows>(acc, p.a2 + r0 * p.lda2, p.lda2, p.b2[v], p.k2);
  for (int r = 0; r < Rows; ++r) {
    float* c = p.c[v] + (r0 + r) * p.ldc[v];
    for (int h = 0; h < 2; ++h) {
      avx2_store_lanes(c + 8 * h, acc[r][h], columns - 8 * h);
    }
  }
}

void float_tile(const FloatTileArgs& p) {
  using Block = void (*)(const FloatTileArgs&, int, int64_t);
  static constexpr Block blocks[kAvx2Rows] = {avx2_float_block<1>, avx2_float_block<2>, avx2_float_block<3>,
                                              avx2_float_block<4>, avx2_float_block<5>, avx2_float_block<6>};
  TORCH_INTERNAL_ASSERT(p.vectors >= 1 && p.vectors <= 4, "tile: 1 to 4 vectors");
  // Rows in blocks of as even a height as kAvx2Rows allows (run_tile's reason).
  const int64_t count = (p.rows + kAvx2Rows - 1) / kAvx2Rows;
  for (int v = 0; v < p.vectors; ++v) {
    for (int64_t b = 0, r0 = 0; b < count; ++b) {
      const int64_t rows = (p.rows - r0 + (count - b) - 1) / (count - b);
      blocks[rows - 1](p, v, r0);
      r0 += rows;
    }
  }
}
#endif

void pointwise_forward(const PointwiseForwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, args.dtype, "lstm_ext_pointwise_forward",
                                  [&] { forward_typed<scalar_t>(args); });
}

void pointwise_backward(const PointwiseBackwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, args.dtype, "lstm_ext_pointwise_backward",
                                  [&] { backward_typed<scalar_t>(args); });
}

void gru_pointwise_forward(const GruPointwiseForwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, args.dtype, "lstm_ext_gru_pointwise_forward",
                                  [&] { gru_forward_typed<scalar_t>(args); });
}

void gru_pointwise_backward(const GruPointwiseBackwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, args.dtype, "lstm_ext_gru_pointwise_backward",
                                  [&] { gru_backward_typed<scalar_t>(args); });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace lstm_ext
