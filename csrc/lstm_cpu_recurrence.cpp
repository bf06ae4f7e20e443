// The CPU time loop of one layer and direction, and the CPU matrix products
// that do not go to ATen (see lstm_kernels.h).
//
// torch.nn.LSTM on the CPU is oneDNN's fused RNN primitive; a loop of ATen
// addmm_ calls loses to it on three counts, each measured: the BLAS repacks
// W_hh on every step, each step forks and joins threads more than once, and
// the gates make a round trip through memory between the product and the
// pointwise pass. Here W_hh is packed once per call into panels, each step
// is one parallel region, and each task's product accumulates into its block
// of the step's input projection, which the pointwise pass then reads while
// it is still in L1 and overwrites with the activated gates.
//
// Panels are `kPanel` hidden units wide: the forward panel of units
// [j0, j0 + w) is, per gate, the [H, w] block of that gate's columns of
// W_hh^T; the backward panel is the [4H, w] slice W_hh[:, j0:j0+w].
// Packing also removes the power-of-two row strides of W_hh that alias in the
// L1 cache at H = 256, 512, 1024.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "buffer_pool.h"
#include "lstm_kernels.h"

namespace lstm_ext {
namespace cpu {
namespace {

// Hidden units per panel: one or two SIMD vectors of each gate.
constexpr int64_t kPanel = kRecurrencePanel;
// Below this many multiply-adds a task costs less than waking a thread.
constexpr int64_t kMinTaskFmas = 32768;
// Row blocks are at least this tall when rows are split across threads.
constexpr int64_t kMinBlockRows = 8;

// Up to this many outputs (M*N), a float or double product with A read
// transposed (the weight gradients of small problems) is outer_products'
// (lstm_kernels.h). Returns whether it took the product.
constexpr int64_t kOuterProductOutputs = 1024;

template <typename scalar_t>
bool by_outer_products(int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda, bool transpose_a,
                       const scalar_t* B, int64_t ldb, scalar_t* C, int64_t ldc, bool accumulate) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    if (transpose_a && M * N <= kOuterProductOutputs) {
      outer_products({c10::CppTypeToScalarType<scalar_t>::value, M, N, K, A, lda, B, ldb, C, ldc, accumulate});
      return true;
    }
  }
  return false;
}

// C[M, N] (+)= A[M, K] @ B[K, N], row-major with leading dimensions; A is
// read transposed (A[k * lda + m]) when transpose_a. Small transposed ones
// go to outer_products; other float ones to oneDNN's JIT micro-kernel that
// ATen exposes (its brgemm; without oneDNN it falls back to the BLAS); the
// rest, which the tests and rare users need, to a plain loop that
// accumulates in float or double.
template <typename scalar_t>
void tile_gemm(int64_t M, int64_t N, int64_t K, const scalar_t* A, int64_t lda, bool transpose_a, const scalar_t* B,
               int64_t ldb, scalar_t* C, int64_t ldc, bool accumulate) {
  if (by_outer_products(M, N, K, A, lda, transpose_a, B, ldb, C, ldc, accumulate)) return;
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kColumns = 64;
  acc_t acc[kColumns];
  const int64_t a_row = transpose_a ? 1 : lda, a_col = transpose_a ? lda : 1;
  for (int64_t n0 = 0; n0 < N; n0 += kColumns) {
    const int64_t n_end = std::min(kColumns, N - n0);
    for (int64_t m = 0; m < M; ++m) {
      scalar_t* c = C + m * ldc + n0;
      for (int64_t n = 0; n < n_end; ++n) acc[n] = accumulate ? acc_t(c[n]) : acc_t(0);
      for (int64_t k = 0; k < K; ++k) {
        const acc_t a = A[m * a_row + k * a_col];
        const scalar_t* b = B + k * ldb + n0;
        for (int64_t n = 0; n < n_end; ++n) acc[n] += a * acc_t(b[n]);
      }
      for (int64_t n = 0; n < n_end; ++n) c[n] = static_cast<scalar_t>(acc[n]);
    }
  }
}

template <>
void tile_gemm<float>(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool transpose_a, const float* B,
                      int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (by_outer_products(M, N, K, A, lda, transpose_a, B, ldb, C, ldc, accumulate)) return;
  std::unique_ptr<float[]> a_copy;  // not zero-filled: every element is written
  if (transpose_a) {  // brgemm reads A row-major only
    a_copy.reset(new float[static_cast<size_t>(M * K)]);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t m = 0; m < M; ++m) a_copy[m * K + k] = A[k * lda + m];
    A = a_copy.get();
    lda = K;
  }
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, A, B, C, /*is_vnni=*/false);
}

// How one step's work is cut: panels of hidden units times blocks of rows.
struct Tiling {
  int64_t hidden, batch, gates, depth, max_block_rows;
  int64_t panel_units;  // hidden units per panel: kPanel, or a multiple of it
  int64_t panels, row_blocks, block_rows, grain;
  bool rows_outer;  // consecutive tasks share rows (else panels)

  // max_block_rows caps the rows of a task once the step is shared: the
  // backward's products read [rows, 4H] of the next step's gate gradients,
  // which at 16 rows stay in L2 while a thread runs through its panels
  // (B=64, H=512, 16-unit panels: backward 6-13% faster than with
  // whole-batch tasks; with 64-unit panels, 64 rows are faster, see
  // backward_typed).
  // H columns of gates blocks each (a panel holds all of its units' gates),
  // each a product of depth multiply-adds per row.
  Tiling(int64_t B, int64_t H, int64_t gates_per_unit, int64_t product_depth, int64_t max_rows,
         bool rows_outer_order, int64_t units = kPanel)
      : hidden(H), batch(B), gates(gates_per_unit), depth(product_depth), max_block_rows(max_rows),
        panel_units(units), rows_outer(rows_outer_order) {
    panels = (H + panel_units - 1) / panel_units;
    // Enough tasks for every thread twice over, by splitting rows when there
    // are too few panels; one block when the step is too small to share.
    const bool shared = B * gates * H * depth >= 2 * kMinTaskFmas;
    const int64_t wanted_blocks =
        shared ? std::max<int64_t>(1, (2 * at::get_num_threads() + panels - 1) / panels) : 1;
    const int64_t max_blocks = std::max<int64_t>(1, B / kMinBlockRows);
    row_blocks = std::min(wanted_blocks, max_blocks);
    block_rows = (B + row_blocks - 1) / row_blocks;
    if (shared) block_rows = std::min(block_rows, max_block_rows);
    row_blocks = (B + block_rows - 1) / block_rows;
    const int64_t task_fmas = block_rows * gates * std::min(H, panel_units) * depth;
    grain = std::max<int64_t>(1, kMinTaskFmas / std::max<int64_t>(1, task_fmas));
  }
  // The same cut of a step with fewer rows (variable lengths: the sequences
  // still running).
  Tiling for_rows(int64_t rows) const {
    return rows == batch ? *this : Tiling(rows, hidden, gates, depth, max_block_rows, rows_outer, panel_units);
  }
  int64_t tasks() const { return panels * row_blocks; }
  // Task u covers hidden units [j0, j0 + width) and rows [r0, r0 + rows).
  void task(int64_t u, int64_t& j0, int64_t& width, int64_t& r0, int64_t& rows) const {
    const int64_t p = rows_outer ? u % panels : u / row_blocks;
    const int64_t r = rows_outer ? u / panels : u % row_blocks;
    j0 = p * panel_units;
    width = std::min(panel_units, hidden - j0);
    r0 = r * block_rows;
    rows = std::min(block_rows, batch - r0);
  }
};

template <typename Fn>
void for_each_task(const Tiling& tiling, const Fn& fn) {
  at::parallel_for(0, tiling.tasks(), tiling.grain, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      int64_t j0, width, r0, rows;
      tiling.task(u, j0, width, r0, rows);
      fn(j0, width, r0, rows);
    }
  });
}

// fn(j0, width) for every panel, in parallel (packing the weights).
template <typename Fn>
void for_each_panel(const Tiling& tiling, const Fn& fn) {
  at::parallel_for(0, tiling.panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t j0 = p * tiling.panel_units;
      fn(j0, std::min(tiling.panel_units, tiling.hidden - j0));
    }
  });
}

// A forward task's products with its panel: block q is columns
// [first[q], first[q] + columns[q]) of the panel's [H, gates * w] block of
// W_hh^T (column g * w + jj: unit j0 + jj of gate g), packed one block after
// the other. LSTM: one block for the four gates when they are adjacent
// columns of the step's gates (interleaved, or a panel that is all of a
// hidden size below kPanel), else one per gate. GRU: r and z as one block
// when adjacent, n always a block of its own (it goes to hidden_n, not into
// the gates).
struct ProductBlocks {
  int count = 0;
  int64_t first[4] = {}, columns[4] = {};

  ProductBlocks() = default;
  ProductBlocks(CellKind cell, int64_t width, int64_t hidden, bool interleaved) {
    const bool adjacent = interleaved || (width == hidden && width < kPanel);
    if (cell == CellKind::LSTM) {
      if (adjacent) {
        add(0, 4 * width);
      } else {
        for (int64_t g = 0; g < 4; ++g) add(g * width, width);
      }
    } else if (adjacent) {
      add(0, 2 * width);
      add(2 * width, width);
    } else {
      for (int64_t g = 0; g < 3; ++g) add(g * width, width);
    }
  }
  void add(int64_t first_column, int64_t n) {
    first[count] = first_column;
    columns[count++] = n;
  }
  // All of a panel's columns as one block.
  static ProductBlocks one(int64_t columns) {
    ProductBlocks blocks;
    blocks.add(0, columns);
    return blocks;
  }
};

// The next vector of a tile: its packed B, where its columns go (row stride
// ldc), how many, and whether they add to what is there.
template <typename T>
void add_tile_vector(TileArgs<T>& tile, const T* b, float* c, int64_t ldc, int64_t columns, bool accumulate,
                     const float* init = nullptr) {
  const int v = tile.vectors++;
  tile.init[v] = init;
  tile.b[v] = b;
  tile.c[v] = c;
  tile.ldc[v] = ldc;
  tile.columns[v] = columns;
  tile.accumulate[v] = accumulate;
}

template <typename scalar_t>
void forward_typed(const RecurrenceForwardArgs& a) {
  const RecurrenceShape& shape = a.shape;
  const bool gru = shape.cell == CellKind::GRU;
  const int64_t T = shape.steps, B = shape.batch, H = shape.hidden, gates_per_unit = gate_count(shape.cell);
  // R: the width of h_prev, the recurrent product's depth (P with projections).
  const int64_t G = gates_per_unit * H, P = shape.proj, R = shape.recurrent();
  const auto* w = static_cast<const scalar_t*>(a.weight_hh);
  auto* gates = static_cast<scalar_t*>(a.gates);
  auto* output = static_cast<scalar_t*>(a.output);
  auto* cells = static_cast<scalar_t*>(a.cells);
  auto* hidden_n = static_cast<scalar_t*>(a.hidden_n);
  auto* hidden = static_cast<scalar_t*>(a.hidden);
  auto* output_bf16 = static_cast<c10::BFloat16*>(a.output_bf16);
  const auto* bias_hn = static_cast<const scalar_t*>(a.bias_hn);
  const Tiling tiling(B, H, gates_per_unit, R, /*max_block_rows=*/B, /*rows_outer_order=*/false);
  const StepLayout layout(shape);

  // bfloat16 products (RecurrenceForwardArgs::output_bf16) read only the
  // bfloat16 panels below, so the float ones are not packed.
  const bool bf16 = a.output_bf16 != nullptr;
  TORCH_INTERNAL_ASSERT(!bf16 || (std::is_same_v<scalar_t, float> && P == 0),
                        "bfloat16 products: float state and no projections only");
  // Column c of a panel of units [j0, j0 + width) is unit j0 + c % width of
  // gate c / width: this row of W_hh.
  const auto weight_row = [H](int64_t j0, int64_t width, int64_t column) {
    return (column / width) * H + j0 + column % width;
  };
  // float under the AVX2 and AVX512 kernels: the product in float_tile's vectors too
  // (ATen's brgemm call costs more than a task's product at these sizes).
  const bool float_vectors = !bf16 && std::is_same_v<scalar_t, float> && float_tiles();
  const bool vectors = bf16 || float_vectors;
  // Forward panels: each panel's [R, gates * w] block of W_hh^T, cut into
  // its ProductBlocks, each [R, columns] row-major.
  const PooledArray<scalar_t> packed(vectors ? 0 : static_cast<size_t>(G * R));
  if (!vectors) {
    for_each_panel(tiling, [&](int64_t j0, int64_t width) {
      const ProductBlocks blocks(shape.cell, width, H, a.gates_interleaved);
      scalar_t* panel = packed.data() + gates_per_unit * R * j0;
      for (int q = 0; q < blocks.count; ++q) {
        scalar_t* block = panel + R * blocks.first[q];
        for (int64_t c = 0; c < blocks.columns[q]; ++c) {
          const scalar_t* row = w + weight_row(j0, width, blocks.first[q] + c) * R;
          for (int64_t k = 0; k < R; ++k) block[k * blocks.columns[q] + c] = row[k];
        }
      }
    });
  }
  // bfloat16 or float vector products: each panel's ProductBlocks as the
  // tiles' vectors of 16 columns, kVectorsPerPanel slots per panel.
  static_assert(kPanel == kBf16Vector, "a panel's blocks are at most four vectors");
  constexpr int kVectorsPerPanel = 4;
  const int64_t vector_elements = bf16 ? bf16_vector_elements(R) : float_vector_elements(R);
  const int64_t slots = vectors ? tiling.panels * kVectorsPerPanel * vector_elements : 0;
  const PooledArray<c10::BFloat16> packed_bf16(bf16 ? static_cast<size_t>(slots) : 0);
  const PooledArray<float> packed_float(float_vectors ? static_cast<size_t>(slots) : 0);
  // A [gates * H, K] weight (the standard gate order) as the tiles'
  // vectors, each panel's kVectorsPerPanel slots: float_tile's (element
  // (k, n) at k * kBf16Vector + n) or bf16_tile's (k in pairs).
  const auto pack_vectors = [&](const auto* weight, int64_t K, auto* dst, bool gates_as_one = false) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(dst)>>;
    constexpr bool pairs = std::is_same_v<T, c10::BFloat16>;
    const int64_t elements = pairs ? bf16_vector_elements(K) : float_vector_elements(K);
    for_each_panel(tiling, [&](int64_t j0, int64_t width) {
      ProductBlocks blocks(shape.cell, width, H, a.gates_interleaved);
      if (gates_as_one) blocks = ProductBlocks::one(gates_per_unit * width);
      int64_t slot = j0 / kPanel * kVectorsPerPanel * elements;
      for (int q = 0; q < blocks.count; ++q) {
        for (int64_t c0 = 0; c0 < blocks.columns[q]; c0 += kBf16Vector, slot += elements) {
          // Column n of the vector is row weight_row(...) of the weight (a
          // narrow last panel's vector spans gates); zeros past its columns.
          const int64_t count = std::min(kBf16Vector, blocks.columns[q] - c0);
          T* out = dst + slot;
          // A full panel's vector is 16 consecutive rows of one gate, and
          // the vector layout is their transpose in 32-bit words (a float,
          // or a bfloat16 pair of k): one SIMD transpose. The element loop
          // below had been 4-5% of a bfloat16 forward at B=16, H=128.
          const auto* first_row = weight + weight_row(j0, width, blocks.first[q] + c0) * K;
          const int64_t words = pairs ? K / 2 : K;
          if (width == kPanel && count == kBf16Vector && (!pairs || K % 2 == 0) &&
              reinterpret_cast<std::uintptr_t>(first_row) % alignof(float) == 0) {
            transpose({kBf16Vector, words, reinterpret_cast<const float*>(first_row), words,
                       reinterpret_cast<float*>(out), kBf16Vector});
            continue;
          }
          std::fill(out, out + elements, T(0.0f));
          for (int64_t n = 0; n < count; ++n) {
            const auto* row = weight + weight_row(j0, width, blocks.first[q] + c0 + n) * K;
            for (int64_t k = 0; k < K; ++k) {
              out[pairs ? k / 2 * 2 * kBf16Vector + 2 * n + k % 2 : k * kBf16Vector + n] = row[k];
            }
          }
        }
      }
    });
  };
  if (float_vectors) pack_vectors(reinterpret_cast<const float*>(w), R, packed_float.data());
  if (bf16) pack_vectors(static_cast<const c10::BFloat16*>(a.weight_hh_bf16), R, packed_bf16.data());
  // The input projection inside the loop (RecurrenceForwardArgs::input):
  // W_ih as the tiles' vectors (float, or bfloat16 for bf16 products), and
  // the biases' sum in the interleaved order, each tile vector's start.
  const bool fused_input = a.project_input;
  TORCH_INTERNAL_ASSERT(!fused_input || vectors, "the input projection in the loop: float or bfloat16 tiles only");
  const bool step_gates = fused_input && !a.keep_cells;  // gates: one step's scratch
  const int64_t I = a.input_size;
  const int64_t input_elements = !fused_input ? 0 : bf16 ? bf16_vector_elements(I) : float_vector_elements(I);
  const size_t input_slots = fused_input ? static_cast<size_t>(tiling.panels * kVectorsPerPanel * input_elements) : 0;
  const PooledArray<float> packed_ih(bf16 ? 0 : input_slots);
  const PooledArray<c10::BFloat16> packed_ih_bf16(bf16 ? input_slots : 0);
  const PooledArray<float> bias_interleaved(fused_input ? static_cast<size_t>(G) : 0);
  const bool has_bias = a.bias != nullptr || a.bias2 != nullptr;
  // A GRU whose gates fit one vector (3H <= 16, the course's H = 3): its
  // input projection is one vector of r, z and n, and the recurrent r, z
  // join it in the same pass (W_hh's r, z vector has zeros where n is), so a
  // step is two passes of the tile, not four part-filled ones; n's recurrent
  // part still goes to hidden_n on its own. At the course's size (AVX2,
  // alternating builds) the forward went from 63-66 to 55-58 µs.
  // (3H <= 16 means one panel, H < kPanel, so its blocks are r, z then n.)
  const bool gru_one_vector = gru && fused_input && float_vectors && gates_per_unit * H <= kBf16Vector;
  if (fused_input) {
    if (bf16) {
      pack_vectors(static_cast<const c10::BFloat16*>(a.weight_ih), I, packed_ih_bf16.data());
    } else {
      pack_vectors(static_cast<const float*>(a.weight_ih), I, packed_ih.data(), gru_one_vector);
    }
    const auto* bias = static_cast<const float*>(a.bias);
    const auto* bias2 = static_cast<const float*>(a.bias2);
    for (int64_t c = 0; c < G; ++c) {
      const int64_t column = recurrence_gate_order(c, H, gates_per_unit);
      bias_interleaved.data()[c] = (bias != nullptr ? bias[column] : 0.0f) + (bias2 != nullptr ? bias2[column] : 0.0f);
    }
  }
  // Step t's first input row: float, or bfloat16 for bf16 products.
  const auto input_rows = [&](int64_t t, int64_t row0) {
    const int64_t offset = shape.batch_sizes != nullptr ? row0 * a.input_row_stride : t * a.input_step_stride;
    return static_cast<const char*>(a.input) + offset * (bf16 ? sizeof(c10::BFloat16) : sizeof(float));
  };
  // Zoneout: d_c and d_h of a task's rows, from the masks or a row of the rate.
  TORCH_INTERNAL_ASSERT(!a.zoneout || (!gru && P == 0 && !bf16 && !a.gates_interleaved),
                        "zoneout: the LSTM without projections, bfloat16 products or interleaved gates");
  std::vector<scalar_t> rate_c(a.zoneout && a.zoneout_mask_c == nullptr ? H : 0, scalar_t(a.zoneout_rate_c));
  std::vector<scalar_t> rate_h(a.zoneout && a.zoneout_mask_h == nullptr ? H : 0, scalar_t(a.zoneout_rate_h));
  const auto zoneout_rows = [&](const void* mask, const std::vector<scalar_t>& rate, int64_t row, int64_t j0) {
    return mask != nullptr ? InRows{static_cast<const scalar_t*>(mask) + row * H + j0, H}
                           : InRows{rate.data() + j0, 0};
  };
  // Projections: panels of W_hr^T over the P outputs, each [H, w].
  const Tiling projection(B, P, 1, H, /*max_block_rows=*/B, /*rows_outer_order=*/false);
  const PooledArray<scalar_t> packed_hr(static_cast<size_t>(P * H));
  if (P > 0) {
    const auto* w_hr = static_cast<const scalar_t*>(a.weight_hr);
    for_each_panel(projection, [&](int64_t p0, int64_t width) {
      scalar_t* panel = packed_hr.data() + H * p0;
      for (int64_t c = 0; c < width; ++c)
        for (int64_t k = 0; k < H; ++k) panel[k * width + c] = w_hr[(p0 + c) * H + k];
    });
  }

  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = shape.reverse ? T - 1 - s : s;
    const int64_t t_prev = shape.reverse ? t + 1 : t - 1;
    // The rows of step t are its first rows_t sequences, which all ran the step before.
    const int64_t row0 = layout.offset[t];
    // The float h of a step: its rows of the output, or (bfloat16 products)
    // its slot of the two (RecurrenceForwardArgs::output_bf16).
    const auto float_h = [&](int64_t step, int64_t time) {
      return output + (bf16 ? step % 2 * B : layout.offset[time]) * R;
    };
    const scalar_t* h_prev = s == 0 ? static_cast<const scalar_t*>(a.h0) : float_h(s - 1, t_prev);
    const c10::BFloat16* h_prev_bf16 =
        !bf16 ? nullptr : s == 0 ? static_cast<const c10::BFloat16*>(a.h0_bf16) : output_bf16 + layout.offset[t_prev] * R;
    // Every step's c (LSTM) or hidden n (GRU), or (inference) only what the
    // next step reads: the last two steps' c, the step's own hidden n.
    const auto cells_of = [&](int64_t step, int64_t time) {
      return cells + (a.keep_cells ? layout.offset[time] : step % 2 * B) * H;
    };
    const scalar_t* c_prev = gru ? nullptr : s == 0 ? static_cast<const scalar_t*>(a.c0) : cells_of(s - 1, t_prev);
    scalar_t* c_t = gru ? nullptr : cells_of(s, t);
    scalar_t* hidden_n_t = gru ? hidden_n + (a.keep_cells ? row0 : 0) * H : nullptr;
    // The step's gates: its rows of [T, B, ...], or (inference with the input
    // projection in the loop) the one step's scratch.
    scalar_t* gates_t = gates + (step_gates ? 0 : row0) * G;
    const char* x_t = fused_input ? input_rows(t, row0) : nullptr;
    // Where the pointwise pass writes o * tanh(c): the step's output, or
    // (projections) the scratch that the projection reads.
    scalar_t* h_t = P > 0 ? hidden : float_h(s, t);
    for_each_task(tiling.for_rows(layout.rows[t]), [&](int64_t j0, int64_t width, int64_t r0, int64_t rows) {
      // The recurrent product accumulates into the step's input projection
      // in place (the GRU's n part into hidden_n); the pointwise pass then
      // reads those pre-activations while they are in L1 and overwrites them
      // with the activated gates.
      const int64_t gate_stride = a.gates_interleaved ? width : H;
      scalar_t* block = gates_t + r0 * G + (a.gates_interleaved ? gates_per_unit * j0 : j0);
      const scalar_t* panel = vectors ? nullptr : packed.data() + gates_per_unit * R * j0;  // brgemm panels only
      const ProductBlocks blocks(shape.cell, width, H, a.gates_interleaved);
      Bf16TileArgs tile{rows, R, bf16 ? h_prev_bf16 + r0 * R : nullptr, R, 0};
      FloatTileArgs float_args{rows, R, float_vectors ? reinterpret_cast<const float*>(h_prev) + r0 * R : nullptr, R, 0};
      const int64_t first_slot = j0 / kPanel * kVectorsPerPanel;
      // The LSTM's recurrent product joins its input projection's tile
      // (TileArgs::k2); the GRU's n part goes elsewhere (hidden_n).
      const bool one_pass = fused_input && !gru;
      if (gru_one_vector) {
        if constexpr (std::is_same_v<scalar_t, float>) {
          const int64_t lda = a.input_row_stride;
          FloatTileArgs x_args{rows, I, reinterpret_cast<const float*>(x_t) + r0 * lda, lda, 0};
          add_tile_vector(x_args, packed_ih.data(), block, G, G, /*accumulate=*/false,
                          has_bias ? bias_interleaved.data() : nullptr);
          x_args.k2 = R;
          x_args.a2 = h_prev + r0 * R;
          x_args.lda2 = R;
          x_args.b2[0] = packed_float.data();  // r, z (block 0 of W_hh), zeros under n
          float_tile(x_args);
          FloatTileArgs n_args{rows, R, h_prev + r0 * R, R, 0};
          add_tile_vector(n_args, packed_float.data() + vector_elements, hidden_n_t + r0 * H, H, H,
                          /*accumulate=*/false);
          float_tile(n_args);
        }
      } else if (fused_input) {
        // x_t W_ih^T + biases into the task's block of the step's gates (the
        // GRU's n part too: it stays in the gates, apart from hidden_n).
        const int64_t lda = a.input_row_stride;
        FloatTileArgs x_args{rows, I, bf16 ? nullptr : reinterpret_cast<const float*>(x_t) + r0 * lda, lda, 0};
        Bf16TileArgs x16_args{rows, I, bf16 ? reinterpret_cast<const c10::BFloat16*>(x_t) + r0 * lda : nullptr, lda, 0};
        for (int q = 0; q < blocks.count; ++q) {
          const int64_t g = blocks.first[q] / width;
          float* out = reinterpret_cast<float*>(block + g * gate_stride);
          for (int64_t c0 = 0; c0 < blocks.columns[q]; c0 += kBf16Vector) {
            const float* init = has_bias ? bias_interleaved.data() + gates_per_unit * j0 + blocks.first[q] + c0 : nullptr;
            const int64_t columns = std::min(kBf16Vector, blocks.columns[q] - c0);
            if (bf16) {
              add_tile_vector(x16_args, packed_ih_bf16.data() + (first_slot + x16_args.vectors) * input_elements,
                              out + c0, G, columns, /*accumulate=*/false, init);
            } else {
              add_tile_vector(x_args, packed_ih.data() + (first_slot + x_args.vectors) * input_elements, out + c0, G,
                              columns, /*accumulate=*/false, init);
            }
          }
        }
        if (one_pass) {  // + h_prev W_hh^T: the same vectors of W_hh, in the same order
          if (bf16) {
            x16_args.k2 = R;
            x16_args.a2 = h_prev_bf16 + r0 * R;
            x16_args.lda2 = R;
            for (int v = 0; v < x16_args.vectors; ++v) {
              x16_args.b2[v] = packed_bf16.data() + (first_slot + v) * vector_elements;
            }
          } else {
            x_args.k2 = R;
            x_args.a2 = reinterpret_cast<const float*>(h_prev) + r0 * R;
            x_args.lda2 = R;
            for (int v = 0; v < x_args.vectors; ++v) {
              x_args.b2[v] = packed_float.data() + (first_slot + v) * vector_elements;
            }
          }
        }
        if (bf16) {
          bf16_tile(x16_args);
        } else {
          float_tile(x_args);
        }
      }
      for (int q = 0; q < blocks.count && !one_pass && !gru_one_vector; ++q) {
        // Gate g's columns accumulate into the gates, except the GRU's n,
        // which is written into hidden_n.
        const int64_t g = blocks.first[q] / width;
        const bool to_hidden_n = gru && g == 2;
        scalar_t* out = to_hidden_n ? hidden_n_t + r0 * H + j0 : block + g * gate_stride;
        const int64_t ldc = to_hidden_n ? H : G;
        if (!vectors) {
          tile_gemm<scalar_t>(rows, blocks.columns[q], R, h_prev + r0 * R, R, false, panel + R * blocks.first[q],
                              blocks.columns[q], out, ldc, /*accumulate=*/!to_hidden_n);
          continue;
        }
        for (int64_t c0 = 0; c0 < blocks.columns[q]; c0 += kBf16Vector) {  // one vector of the tile each
          float* c = reinterpret_cast<float*>(out) + c0;
          const int64_t columns = std::min(kBf16Vector, blocks.columns[q] - c0);
          if (bf16) {
            add_tile_vector(tile, packed_bf16.data() + (first_slot + tile.vectors) * vector_elements, c, ldc, columns,
                            !to_hidden_n);
          } else {
            add_tile_vector(float_args, packed_float.data() + (first_slot + float_args.vectors) * vector_elements, c,
                            ldc, columns, !to_hidden_n);
          }
        }
      }
      if (bf16 && !one_pass) bf16_tile(tile);
      if (float_vectors && !one_pass && !gru_one_vector) float_tile(float_args);
      // bfloat16: the task's h rounded, into output_bf16 and back into the float output.
      const auto round_h = [&](scalar_t* h) {
        if (bf16) bf16_round({rows, width, reinterpret_cast<float*>(h), H, output_bf16 + (row0 + r0) * H + j0, H});
      };
      if (gru) {
        scalar_t* hn = hidden_n_t + r0 * H + j0;
        const GruPointwiseForwardArgs args{shape.dtype, rows, width,
                                           /*preact=*/{block, G, gate_stride},
                                           /*hidden_n_raw=*/{hn, H},
                                           /*bias_hn=*/bias_hn + j0,
                                           /*h_prev=*/{h_prev + r0 * H + j0, H},
                                           /*gates=*/{block, G, gate_stride},
                                           /*hidden_n=*/{hn, H},
                                           /*h=*/{h_t + r0 * H + j0, H}};
        pointwise(args);
        round_h(h_t + r0 * H + j0);
        return;
      }
      // Inference: no backward reads the activated gates, so they are not
      // stored (at the course's H=3 each of a block's elements is a scalar
      // store).
      PointwiseForwardArgs args{shape.dtype, rows, width,
                                /*preact=*/{block, G, gate_stride},
                                /*addend=*/{nullptr, 0, 0},
                                /*c_prev=*/{c_prev + r0 * H + j0, H},
                                /*gates=*/{a.keep_cells ? block : nullptr, G, gate_stride},
                                /*h=*/{h_t + r0 * H + j0, H},
                                /*c=*/{c_t + r0 * H + j0, H},
                                /*rounded=*/bf16};
      if (a.zoneout) {
        args.zoneout = true;
        args.h_prev = {h_prev + r0 * R + j0, R};
        args.zoneout_c = zoneout_rows(a.zoneout_mask_c, rate_c, row0 + r0, j0);
        args.zoneout_h = zoneout_rows(a.zoneout_mask_h, rate_h, row0 + r0, j0);
      }
      pointwise(args);
      round_h(h_t + r0 * H + j0);
    });
    if (P > 0) {  // r_t = hidden @ W_hr^T, once every unit of the step is done
      scalar_t* r_t = output + row0 * P;
      for_each_task(projection.for_rows(layout.rows[t]), [&](int64_t p0, int64_t width, int64_t r0, int64_t rows) {
        tile_gemm<scalar_t>(rows, width, H, hidden + r0 * H, H, false, packed_hr.data() + H * p0, width,
                            r_t + r0 * P + p0, P, /*accumulate=*/false);
      });
    }
  }
}

template <typename scalar_t>
void backward_typed(const RecurrenceBackwardArgs& a) {
  const RecurrenceShape& shape = a.shape;
  const bool gru = shape.cell == CellKind::GRU;
  const int64_t T = shape.steps, B = shape.batch, H = shape.hidden, gates_per_unit = gate_count(shape.cell);
  const int64_t G = gates_per_unit * H, P = shape.proj, R = shape.recurrent();
  const auto* w = static_cast<const scalar_t*>(a.weight_hh);
  const auto* gates = static_cast<const scalar_t*>(a.gates);
  const auto* cells = static_cast<const scalar_t*>(a.cells);
  auto* grad_h = static_cast<scalar_t*>(a.grad_h);
  auto* grad_c = static_cast<scalar_t*>(a.grad_c);
  auto* grad_gates = static_cast<scalar_t*>(a.grad_gates);
  const auto* grad_h_n = static_cast<const scalar_t*>(a.grad_h_n);
  const int64_t h_n_row_stride = a.grad_h_n_row_stride < 0 ? R : a.grad_h_n_row_stride;
  const int64_t h_n_column_stride = a.grad_h_n_column_stride;
  const auto* output = static_cast<const scalar_t*>(a.output);
  const auto* hidden_n = static_cast<const scalar_t*>(a.hidden_n);
  auto* grad_hidden = static_cast<scalar_t*>(a.grad_hidden_gates);
  auto* grad_hidden_state = static_cast<scalar_t*>(a.grad_hidden);
  // The gradient that recurs through W_hh: of the pre-activations (LSTM), of
  // the recurrent product (GRU).
  const scalar_t* recurrent_grads = gru ? grad_hidden : grad_gates;
  // Without projections one region per step: each task completes its panel
  // of grad_h, then runs the pointwise pass on it. With them, the recurrent
  // product completes grad_r over panels of P first.
  // Without projections a task is 4 panels of W_hh wide (64 units, a tile
  // of four vectors) and up to 64 rows: at B=64, H=512 the 16-unit,
  // 16-row tasks read all of W_hh (4 MiB, past L2) once per block of rows,
  // four times a step. Zen 5 EPYC, 2 threads, T=100, forward+backward:
  // 210-216 -> 203-204 ms there (torch.nn.LSTM's time / ours 1.19-1.25 ->
  // 1.29-1.41), B=16 and B=32 level.
  const int64_t task_units = P > 0 ? kPanel : 4 * kPanel;
  const Tiling tiling(B, H, gates_per_unit, P > 0 ? P : H, /*max_block_rows=*/P > 0 ? 16 : 64,
                      /*rows_outer_order=*/true, task_units);
  const Tiling recurrent_tiling(B, R, 1, G, /*max_block_rows=*/16, /*rows_outer_order=*/true);
  const StepLayout layout(shape);

  // bfloat16 products (RecurrenceBackwardArgs::weight_hh_bf16): W_hh's
  // panels as bf16_tile vectors, grad_gates rounded per step.
  const bool bf16 = a.weight_hh_bf16 != nullptr;
  TORCH_INTERNAL_ASSERT(!bf16 || (std::is_same_v<scalar_t, float> && !gru && P == 0),
                        "bfloat16 recurrent gradient products: the LSTM without projections only");
  auto* grad_gates_bf16 = static_cast<c10::BFloat16*>(a.grad_gates_bf16);
  const int64_t bf16_elements = bf16 ? bf16_vector_elements(G) : 0;
  const PooledArray<c10::BFloat16> packed_bf16(bf16 ? static_cast<size_t>(recurrent_tiling.panels * bf16_elements) : 0);
  // Backward panels over the R columns of W_hh: packed[G * j0 + k * w + jj] = W_hh[k, j0 + jj].
  const PooledArray<scalar_t> packed(bf16 ? 0 : static_cast<size_t>(G * R));
  // float: the recurrent product of a full panel in float_tile where it runs
  // all products (float_tile_all_products), else brgemm.
  const bool float_tile_products = std::is_same_v<scalar_t, float> && !bf16 && float_tile_all_products();
  for_each_panel(recurrent_tiling, [&](int64_t j0, int64_t width) {
    if (bf16) {
      pack_bf16_vector(static_cast<const c10::BFloat16*>(a.weight_hh_bf16), G, R, 1, j0, width,
                       packed_bf16.data() + j0 / kPanel * bf16_elements);
      return;
    }
    scalar_t* panel = packed.data() + G * j0;
    for (int64_t k = 0; k < G; ++k)
      for (int64_t jj = 0; jj < width; ++jj) panel[k * width + jj] = w[k * R + j0 + jj];
  });
  // Projections: panels of W_hr over its H columns, packed_hr[P * j0 + k * w + jj] = W_hr[k, j0 + jj].
  const PooledArray<scalar_t> packed_hr(static_cast<size_t>(P * H));
  if (P > 0) {
    const auto* w_hr = static_cast<const scalar_t*>(a.weight_hr);
    for_each_panel(tiling, [&](int64_t j0, int64_t width) {
      scalar_t* panel = packed_hr.data() + P * j0;
      for (int64_t k = 0; k < P; ++k)
        for (int64_t jj = 0; jj < width; ++jj) panel[k * width + jj] = w_hr[k * H + j0 + jj];
    });
  }

  // Steps in reverse order of the forward; step s ran after step s - 1.
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = shape.reverse ? T - 1 - s : s;
    const int64_t t_prev = shape.reverse ? t + 1 : t - 1;
    const int64_t t_next = shape.reverse ? t - 1 : t + 1;
    const int64_t row0 = layout.offset[t], prev0 = s == 0 ? 0 : layout.offset[t_prev];
    const scalar_t* c_prev = gru ? nullptr : s == 0 ? static_cast<const scalar_t*>(a.c0) : cells + prev0 * H;
    const scalar_t* grad_next = s == T - 1 ? nullptr : recurrent_grads + layout.offset[t_next] * G;
    // The rows that ran the next step; the others (all at the last step) end here.
    const int64_t rows_next = s == T - 1 ? 0 : layout.rows[t_next];
    // grad_h (grad_r with projections) of the step, panel [j0, j0 + width)
    // of rows [r0, r0 + rows): the output's gradient plus h_n's for the rows
    // that end at this step and the next step's recurrent product for the others.
    const auto complete_grad_h = [&](int64_t j0, int64_t width, int64_t r0, int64_t rows) {
      scalar_t* dh = grad_h + row0 * R + r0 * R + j0;
      const int64_t continuing = std::clamp<int64_t>(rows_next - r0, 0, rows);
      if (grad_h_n != nullptr) {  // h_n's gradient joins where the sequence ends
        for (int64_t r = continuing; r < rows; ++r)
          for (int64_t jj = 0; jj < width; ++jj)
            dh[r * R + jj] += grad_h_n[(r0 + r) * h_n_row_stride + (j0 + jj) * h_n_column_stride];
      }
      if (continuing > 0 && bf16) {
        // The same on the next step's rounded gradients and W_hh's bfloat16
        // panels, a vector of 16 columns each.
        Bf16TileArgs tile{continuing, G, grad_gates_bf16 + ((s + 1) % 2 * B + r0) * G, G,
                          static_cast<int>((width + kPanel - 1) / kPanel)};
        for (int v = 0; v < tile.vectors; ++v) {
          tile.b[v] = packed_bf16.data() + (j0 / kPanel + v) * bf16_elements;
          tile.c[v] = reinterpret_cast<float*>(dh) + v * kPanel;
          tile.ldc[v] = R;
          tile.columns[v] = std::min(kPanel, width - v * kPanel);
          tile.accumulate[v] = true;
          tile.init[v] = nullptr;
        }
        bf16_tile(tile);
      } else if (continuing > 0) {
        // The gradient reaching h_t through the next step's recurrent
        // product: W_hh's full panels through float_tile (a panel is one of
        // its vectors, [4H, 16], element (k, n) at k * 16 + n) where it runs
        // all products, the others ([4H, w] row-major) through tile_gemm.
        int64_t done = 0;
        if constexpr (std::is_same_v<scalar_t, float>) {
          const int full = float_tile_products ? static_cast<int>(width / kPanel) : 0;
          if (full > 0) {
            FloatTileArgs tile{continuing, G, grad_next + r0 * G, G, full};
            for (int v = 0; v < full; ++v) {
              tile.b[v] = packed.data() + G * (j0 + v * kPanel);
              tile.c[v] = dh + v * kPanel;
              tile.ldc[v] = R;
              tile.columns[v] = kPanel;
              tile.accumulate[v] = true;
              tile.init[v] = nullptr;
            }
            float_tile(tile);
            done = full * kPanel;
          }
        }
        for (int64_t j = done; j < width; j += kPanel) {
          const int64_t w_j = std::min(kPanel, width - j);
          tile_gemm<scalar_t>(continuing, w_j, G, grad_next + r0 * G, G, false, packed.data() + G * (j0 + j), w_j,
                              dh + j, R, /*accumulate=*/true);
        }
      }
      return dh;
    };
    if (P > 0) for_each_task(recurrent_tiling.for_rows(layout.rows[t]), complete_grad_h);
    for_each_task(tiling.for_rows(layout.rows[t]), [&](int64_t j0, int64_t width, int64_t r0, int64_t rows) {
      scalar_t* dh;
      if (P > 0) {  // the gradient of o * tanh(c): grad_r @ W_hr
        dh = grad_hidden_state + r0 * H + j0;
        tile_gemm<scalar_t>(rows, width, P, grad_h + row0 * P + r0 * P, P, false, packed_hr.data() + P * j0, width,
                            dh, H, /*accumulate=*/false);
      } else {
        dh = complete_grad_h(j0, width, r0, rows);
      }
      const int64_t gate_offset = row0 * G + r0 * G + j0, row_offset = r0 * H + j0;
      if (gru) {
        // The direct part of h_prev's gradient goes to the previous step's
        // grad_h (or grad_h0): only this task touches those elements.
        const scalar_t* h_prev = s == 0 ? static_cast<const scalar_t*>(a.h0) : output + prev0 * H;
        scalar_t* grad_h_prev = s == 0 ? static_cast<scalar_t*>(a.grad_h0) : grad_h + prev0 * H;
        const GruPointwiseBackwardArgs args{shape.dtype, rows, width,
                                            /*gates=*/{gates + gate_offset, G, H},
                                            /*hidden_n=*/{hidden_n + row0 * H + row_offset, H},
                                            /*h_prev=*/{h_prev + row_offset, H},
                                            /*grad_h=*/{dh, H},
                                            /*grad_input_gates=*/{grad_gates + gate_offset, G, H},
                                            /*grad_hidden_gates=*/{grad_hidden + gate_offset, G, H},
                                            /*grad_h_prev=*/{grad_h_prev + row_offset, H}};
        pointwise(args);
        return;
      }
      scalar_t* dc = grad_c + row_offset;
      const PointwiseBackwardArgs args{shape.dtype, rows, width,
                                       /*gates=*/{gates + gate_offset, G, H},
                                       /*c_prev=*/{c_prev + row_offset, H},
                                       /*c=*/{cells + row0 * H + row_offset, H},
                                       /*grad_h=*/{dh, H},
                                       /*grad_c=*/{dc, H},
                                       /*grad_gates=*/{grad_gates + gate_offset, G, H},
                                       /*grad_c_prev=*/{dc, H}};  // in place: each element read, then written
      pointwise(args);
      if (bf16 && s > 0) {  // the operand of the previous step's recurrent product
        for (int64_t g = 0; g < gates_per_unit; ++g) {
          const int64_t column = g * H + j0;
          bf16_round({rows, width, reinterpret_cast<float*>(grad_gates) + row0 * G + r0 * G + column, G,
                      grad_gates_bf16 + (s % 2 * B + r0) * G + column, G, /*write_back=*/false});
        }
      }
    });
  }
}

// The LayerNorm LSTM's products: B (element (k, n) at b[k * k_stride + n *
// n_stride]) packed once per call into panels of kLnColumns columns, so that
// a step's product is one call per (block of rows, panel) and nothing
// aliases in L1 at power-of-two sizes. Where float_tile runs these products
// (float_tile_all_products, decided once per call) a panel is its columns
// as float_tile vectors of 16 (each [K, 16], zeros past N); else [K, w]
// row-major for brgemm.
constexpr int64_t kLnColumns = 64;

template <typename scalar_t>
class ColumnPanels {
 public:
  ColumnPanels(const scalar_t* b, int64_t K, int64_t N, int64_t k_stride, int64_t n_stride)
      : K_(K), N_(N), vectors_(std::is_same_v<scalar_t, float> && float_tile_all_products()),
        packed_(static_cast<size_t>(vectors_ ? K * ((N + kBf16Vector - 1) / kBf16Vector * kBf16Vector) : K * N)) {
    const int64_t panels = (N + kLnColumns - 1) / kLnColumns;
    at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n0 = p * kLnColumns, width = std::min(kLnColumns, N - n0);
        scalar_t* panel = packed_.data() + K * n0;
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (vectors_) {
            for (int64_t c0 = 0; c0 < width; c0 += kBf16Vector) {
              pack_float_vector(b, K, k_stride, n_stride, n0 + c0, std::min(kBf16Vector, width - c0), panel + K * c0);
            }
            continue;
          }
        }
        for (int64_t k = 0; k < K; ++k)
          for (int64_t c = 0; c < width; ++c) panel[k * width + c] = b[k * k_stride + (n0 + c) * n_stride];
      }
    });
  }

  // C[M, N] (+)= A[M, K] @ B, in parallel over (block of rows, panel) tasks:
  // as Tiling, enough tasks for every thread twice over, none below
  // kMinTaskFmas multiply-adds.
  void product(int64_t M, const scalar_t* A, int64_t lda, scalar_t* C, int64_t ldc, bool accumulate) const {
    if (M == 0) return;
    const int64_t K = K_, N = N_;
    const int64_t panels = (N + kLnColumns - 1) / kLnColumns;
    const bool shared = M * N * K >= 2 * kMinTaskFmas;
    int64_t row_blocks = shared ? std::max<int64_t>(1, (2 * at::get_num_threads() + panels - 1) / panels) : 1;
    row_blocks = std::min(row_blocks, std::max<int64_t>(1, M / kMinBlockRows));
    const int64_t block_rows = (M + row_blocks - 1) / row_blocks;
    row_blocks = (M + block_rows - 1) / block_rows;
    const int64_t grain =
        std::max<int64_t>(1, kMinTaskFmas / std::max<int64_t>(1, block_rows * std::min(N, kLnColumns) * K));
    const scalar_t* packed = packed_.data();
    at::parallel_for(0, row_blocks * panels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int64_t r0 = u / panels * block_rows, rows = std::min(block_rows, M - r0);
        const int64_t n0 = u % panels * kLnColumns, width = std::min(kLnColumns, N - n0);
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (vectors_) {
            FloatTileArgs tile{rows, K, A + r0 * lda, lda, static_cast<int>((width + kBf16Vector - 1) / kBf16Vector)};
            for (int v = 0; v < tile.vectors; ++v) {
              tile.b[v] = packed + K * (n0 + v * kBf16Vector);
              tile.c[v] = C + r0 * ldc + n0 + v * kBf16Vector;
              tile.ldc[v] = ldc;
              tile.columns[v] = std::min(kBf16Vector, width - v * kBf16Vector);
              tile.accumulate[v] = accumulate;
              tile.init[v] = nullptr;
            }
            float_tile(tile);
            continue;
          }
        }
        tile_gemm<scalar_t>(rows, width, K, A + r0 * lda, lda, false, packed + K * n0, width, C + r0 * ldc + n0, ldc,
                            accumulate);
      }
    });
  }

 private:
  int64_t K_, N_;
  bool vectors_;
  PooledArray<scalar_t> packed_;
};

// Rows per task of a row pass: below ~8K elements a task costs less than waking a thread.
inline int64_t ln_grain_rows(int64_t hidden) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(1, 4 * hidden)); }

template <typename scalar_t>
void ln_forward_typed(const LnRecurrenceForwardArgs& a) {
  const int64_t T = a.steps, B = a.batch, H = a.hidden, G = 4 * H;
  // (The plain LSTM's zoneout forward runs on recurrence_forward.)
  TORCH_INTERNAL_ASSERT(a.cell.layer_norm, "ln_recurrence_forward: the LayerNorm LSTM's time loop");
  auto* gates = static_cast<scalar_t*>(a.gates);
  auto* hh_norm = static_cast<scalar_t*>(a.hh_norm);
  auto* stats = static_cast<scalar_t*>(a.stats);
  auto* output = static_cast<scalar_t*>(a.output);
  auto* cells = static_cast<scalar_t*>(a.cells);
  const StepLayout layout(T, B, a.batch_sizes);
  const ColumnPanels<scalar_t> panels(static_cast<const scalar_t*>(a.weight_hh), H, G, 1, H);  // W_hh^T [H, 4H]
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = a.reverse ? T - 1 - s : s, t_prev = a.reverse ? t + 1 : t - 1;
    // Step t's rows: its first rows_t sequences, which all ran the step before.
    const int64_t row0 = layout.offset[t], rows_t = layout.rows[t];
    const auto cells_of = [&](int64_t step, int64_t time) {
      return cells + (a.keep ? layout.offset[time] : step % 2 * B) * H;
    };
    const scalar_t* h_prev = s == 0 ? static_cast<const scalar_t*>(a.h0) : output + layout.offset[t_prev] * H;
    const scalar_t* c_prev = s == 0 ? static_cast<const scalar_t*>(a.c0) : cells_of(s - 1, t_prev);
    scalar_t* c_t = cells_of(s, t);
    scalar_t* h_t = output + row0 * H;
    scalar_t* gates_t = gates + row0 * G;
    // The recurrent product goes to its own row: it is normalized alone.
    scalar_t* hh_t = hh_norm + (a.keep ? row0 : 0) * G;
    scalar_t* stats_t = stats + (a.keep ? row0 : 0) * 3;
    panels.product(rows_t, h_prev, H, hh_t, G, /*accumulate=*/false);
    at::parallel_for(0, rows_t, ln_grain_rows(H), [&](int64_t r0, int64_t end) {
      rows_pass(LnRowsForwardArgs{a.dtype, end - r0, H, a.eps, a.cell.at_row(row0 + r0, H, sizeof(scalar_t)),
                                  gates_t + r0 * G, hh_t + r0 * G, c_prev + r0 * H, h_prev + r0 * H, c_t + r0 * H,
                                  h_t + r0 * H, stats_t + r0 * 3});
    });
  }
}

template <typename scalar_t>
void ln_backward_typed(const LnRecurrenceBackwardArgs& a) {
  const int64_t T = a.steps, B = a.batch, H = a.hidden, G = 4 * H;
  const bool layer_norm = a.cell.layer_norm;
  const auto* gates = static_cast<const scalar_t*>(a.gates);
  const auto* hh_norm = static_cast<const scalar_t*>(a.hh_norm);
  const auto* stats = static_cast<const scalar_t*>(a.stats);
  const auto* cells = static_cast<const scalar_t*>(a.cells);
  auto* grad_h = static_cast<scalar_t*>(a.grad_h);
  auto* grad_pre = static_cast<scalar_t*>(a.grad_pre);
  auto* grad_hh = layer_norm ? static_cast<scalar_t*>(a.grad_hh) : grad_pre;
  const bool zoneout_h = a.cell.mask_h != nullptr || a.cell.rate_h != 0;
  const StepLayout layout(T, B, a.batch_sizes);
  const ColumnPanels<scalar_t> panels(static_cast<const scalar_t*>(a.weight_hh), G, H, H, 1);  // W_hh [4H, H]
  // The gains' gradients, one row of [4H | H | H] per thread, summed at the end.
  const int64_t threads = at::get_num_threads(), width = 6 * H;
  std::vector<scalar_t> partial(layer_norm ? static_cast<size_t>(threads * width) : 0, scalar_t(0));
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = a.reverse ? T - 1 - s : s, t_prev = a.reverse ? t + 1 : t - 1;
    const int64_t rows_t = layout.rows[t];
    const scalar_t* c_prev = s == 0 ? static_cast<const scalar_t*>(a.c0) : cells + layout.offset[t_prev] * H;
    // Where h_prev's gradient goes: the previous step's grad_h, or grad_h0.
    // The rows past rows_t of grad_c (sequences that end before this step)
    // keep their c_n's gradient until their own last step.
    scalar_t* grad_h_prev = s == 0 ? static_cast<scalar_t*>(a.grad_h0) : grad_h + layout.offset[t_prev] * H;
    at::parallel_for(0, rows_t, ln_grain_rows(H), [&](int64_t r0, int64_t end) {
      scalar_t* acc = layer_norm ? partial.data() + at::get_thread_num() * width : nullptr;
      const int64_t row = layout.offset[t] + r0;
      rows_pass(LnRowsBackwardArgs{a.dtype, end - r0, H, a.cell.at_row(row, H, sizeof(scalar_t)), gates + row * G,
                                   layer_norm ? hh_norm + row * G : nullptr, layer_norm ? stats + row * 3 : nullptr,
                                   c_prev + r0 * H, grad_h + row * H, static_cast<scalar_t*>(a.grad_c) + r0 * H,
                                   grad_pre + row * G, layer_norm ? grad_hh + row * G : nullptr,
                                   zoneout_h ? grad_h_prev + r0 * H : nullptr, acc,
                                   acc != nullptr ? acc + G : nullptr, acc != nullptr ? acc + G + H : nullptr});
    });
    // The gradient reaching h_prev through this step's recurrent product.
    panels.product(rows_t, grad_hh + layout.offset[t] * G, G, grad_h_prev, H, /*accumulate=*/true);
  }
  if (layer_norm) {
    scalar_t* outputs[3] = {static_cast<scalar_t*>(a.grad_gamma_hh), static_cast<scalar_t*>(a.grad_gamma_c),
                            static_cast<scalar_t*>(a.grad_beta_c)};
    const int64_t first[3] = {0, G, G + H}, count[3] = {G, H, H};
    for (int q = 0; q < 3; ++q) {
      for (int64_t j = 0; j < count[q]; ++j) {
        scalar_t total = 0;
        for (int64_t k = 0; k < threads; ++k) total += partial[k * width + first[q] + j];
        outputs[q][j] = total;
      }
    }
  }
}

// bias [+ bias2], n elements: the two biases of a layer as one row.
template <typename scalar_t>
std::vector<scalar_t> bias_sum(const scalar_t* bias, const scalar_t* bias2, int64_t n) {
  std::vector<scalar_t> sum(bias, bias + n);
  if (bias2 != nullptr) {
    for (int64_t j = 0; j < n; ++j) sum[j] = static_cast<scalar_t>(sum[j] + bias2[j]);
  }
  return sum;
}

}  // namespace

void small_gemm(const SmallGemmArgs& a) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dtype, "lstm_ext_small_gemm", [&] {
    auto* C = static_cast<scalar_t*>(a.c);
    if (a.bias != nullptr) {  // C = bias + A @ B: the bias in every row first
      const std::vector<scalar_t> bias = bias_sum(static_cast<const scalar_t*>(a.bias),
                                                  static_cast<const scalar_t*>(a.bias2), a.n);
      for (int64_t m = 0; m < a.m; ++m) std::copy(bias.begin(), bias.end(), C + m * a.ldc);
    }
    const auto* B = static_cast<const scalar_t*>(a.b);
    int64_t ldb = a.b_k_stride;
    std::vector<scalar_t> b_rows;  // B row-major, when it is a transposed weight
    if (a.b_n_stride != 1) {
      b_rows.resize(static_cast<size_t>(a.k * a.n));
      for (int64_t k = 0; k < a.k; ++k)
        for (int64_t n = 0; n < a.n; ++n) b_rows[k * a.n + n] = B[k * a.b_k_stride + n * a.b_n_stride];
      B = b_rows.data();
      ldb = a.n;
    }
    const auto* A = static_cast<const scalar_t*>(a.a);
    const bool accumulate = a.bias != nullptr;
    if (a.transpose_a || a.m * a.n * a.k <= kSmallProductFmas) {
      tile_gemm<scalar_t>(a.m, a.n, a.k, A, a.lda, a.transpose_a, B, ldb, C, a.ldc, accumulate);
      return;
    }
    // Larger products of few rows (product() sends them here rather than to
    // the BLAS, whose sums change with the thread count at some row counts):
    // blocks of columns in parallel, each one call, so the result does not
    // depend on how many threads share them.
    // K in chunks, so that a block's rows of B and of A stay in L2 (one
    // call over K = 4096 ran 1.5x slower than MKL at 16 rows).
    constexpr int64_t kColumns = 64, kDepth = 256;
    const int64_t blocks = (a.n + kColumns - 1) / kColumns;
    const int64_t grain = std::max<int64_t>(1, kMinTaskFmas / std::max<int64_t>(1, a.m * a.k * kColumns));
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t n0 = block * kColumns, width = std::min(kColumns, a.n - n0);
        for (int64_t k0 = 0; k0 < a.k; k0 += kDepth) {
          tile_gemm<scalar_t>(a.m, width, std::min(kDepth, a.k - k0), A + k0, a.lda, false, B + k0 * ldb + n0, ldb,
                              C + n0, a.ldc, accumulate || k0 > 0);
        }
      }
    });
  });
}

void column_sums(c10::ScalarType dtype, int64_t rows, int64_t cols, const void* data, void* out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "lstm_ext_column_sums", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> acc(static_cast<size_t>(cols), acc_t(0));
    const auto* x = static_cast<const scalar_t*>(data);
    for (int64_t r = 0; r < rows; ++r, x += cols)
      for (int64_t c = 0; c < cols; ++c) acc[c] += acc_t(x[c]);
    std::copy(acc.begin(), acc.end(), static_cast<scalar_t*>(out));
  });
}

// C[M, N] = [bias +] A[M, K] @ B for B packed as tile vectors of 16 columns,
// `elements` per vector (a chunk of K starting at k0 begins k0 * kBf16Vector
// into it: k0 / 2 VNNI pairs for bfloat16): tasks of kBlockRows rows by four
// vectors, consecutive tasks sharing their rows of A (in L2), each over K in
// chunks of kChunk (even, so that a chunk starts a VNNI pair). The
// backward's weight gradients have K = T * B, whose whole rows of A and
// vectors of B (64 rows and 4 vectors at K = 6400: 2 MB) would not stay in
// L2 between the blocks of a task. run_tile(TileArgs<T>) is bf16_tile or
// float_tile.
template <typename T, typename RunTile>
void vector_tile_product(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* packed, int64_t elements,
                         const float* bias, float* c, int64_t ldc, const RunTile& run_tile) {
  constexpr int64_t kBlockRows = 64, kTaskVectors = 4, kChunk = 512;
  const int64_t vectors = (N + kBf16Vector - 1) / kBf16Vector;
  const int64_t groups = (vectors + kTaskVectors - 1) / kTaskVectors, row_blocks = (M + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, row_blocks * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t m0 = u / groups * kBlockRows, rows = std::min(kBlockRows, M - m0);
      const int64_t v0 = u % groups * kTaskVectors;
      TileArgs<T> tile{rows, 0, nullptr, lda, static_cast<int>(std::min(kTaskVectors, vectors - v0))};
      for (int v = 0; v < tile.vectors; ++v) {
        const int64_t n0 = (v0 + v) * kBf16Vector, columns = std::min(kBf16Vector, N - n0);
        tile.c[v] = c + m0 * ldc + n0;
        tile.ldc[v] = ldc;
        tile.columns[v] = columns;
        tile.init[v] = nullptr;
        if (bias != nullptr) {
          for (int64_t m = 0; m < rows; ++m) std::copy(bias + n0, bias + n0 + columns, tile.c[v] + m * ldc);
        }
      }
      for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kChunk) {
        tile.k = std::min(kChunk, K - k0);
        tile.a = a + m0 * lda + k0;
        for (int v = 0; v < tile.vectors; ++v) {
          tile.b[v] = packed + (v0 + v) * elements + k0 * kBf16Vector;
          tile.accumulate[v] = bias != nullptr || k0 > 0;
        }
        run_tile(tile);
      }
    }
  });
}

// packed_gemm on float_tile (float_tile_all_products): B as vectors of 16
// columns, then vector_tile_product (a task's 64 rows of A and its four
// vectors over a chunk of K, 128 KB each, stay in L2). On the AVX2 host
// grad_input at B=64, T=100, H=512 took 25-30% less time than with brgemm
// (forward+backward 5-6% less).
void packed_gemm_tiles(const PackedGemmArgs& a) {
  const int64_t M = a.m, N = a.n, K = a.k;
  const int64_t vectors = (N + kBf16Vector - 1) / kBf16Vector, elements = float_vector_elements(K);
  const PooledArray<float> packed(static_cast<size_t>(vectors * elements));
  at::parallel_for(0, vectors, 1, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int64_t n0 = v * kBf16Vector;
      pack_float_vector(a.b, K, a.b_k_stride, a.b_n_stride, n0, std::min(kBf16Vector, N - n0),
                        packed.data() + v * elements);
    }
  });
  const std::vector<float> bias = a.bias != nullptr ? bias_sum(a.bias, a.bias2, N) : std::vector<float>();
  vector_tile_product<float>(M, N, K, a.a, a.lda, packed.data(), elements, a.bias != nullptr ? bias.data() : nullptr,
                             a.c, a.ldc, [](const FloatTileArgs& tile) { float_tile(tile); });
}

void packed_gemm(const PackedGemmArgs& a) {
  if (a.k > 0 && float_tile_all_products()) {
    packed_gemm_tiles(a);
    return;
  }
  // Panels of kWidth columns of B, each [K, w] contiguous; tasks are (block of
  // kBlockRows rows, panel), consecutive tasks sharing their rows of A.
  // 64 columns rather than 16 (the time loop's panels): 2-5% faster on the
  // input projections and grad_input at T=100 (scratch benchmark, min of 9).
  constexpr int64_t kBlockRows = 64, kWidth = 64;
  const int64_t M = a.m, N = a.n, K = a.k;
  const int64_t panels = (N + kWidth - 1) / kWidth;
  const PooledArray<float> packed(static_cast<size_t>(K * N));
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * kWidth, width = std::min(kWidth, N - n0);
      float* panel = packed.data() + K * n0;
      const float* src = a.b + n0 * a.b_n_stride;
      if (a.b_n_stride == 1) {
        for (int64_t k = 0; k < K; ++k) {
          const float* row = src + k * a.b_k_stride;
          std::copy(row, row + width, panel + k * width);
        }
      } else {  // B is a transposed weight: read its rows
        for (int64_t jj = 0; jj < width; ++jj)
          for (int64_t k = 0; k < K; ++k) panel[k * width + jj] = src[jj * a.b_n_stride + k * a.b_k_stride];
      }
    }
  });
  const std::vector<float> bias = a.bias != nullptr ? bias_sum(a.bias, a.bias2, N) : std::vector<float>();
  const int64_t row_blocks = (M + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, row_blocks * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t m0 = (u / panels) * kBlockRows, rows = std::min(kBlockRows, M - m0);
      const int64_t n0 = (u % panels) * kWidth, width = std::min(kWidth, N - n0);
      float* tile = a.c + m0 * a.ldc + n0;
      if (a.bias != nullptr) {
        for (int64_t m = 0; m < rows; ++m) std::copy(bias.begin() + n0, bias.begin() + n0 + width, tile + m * a.ldc);
      }
      at::native::cpublas::brgemm(rows, width, K, a.lda, width, a.ldc, /*add_C=*/a.bias != nullptr,
                                  a.a + m0 * a.lda, packed.data() + K * n0, tile, /*is_vnni=*/false);
    }
  });
}

void long_k_gemm(const LongKGemmArgs& a) {
  // A block of B, [kDepth, kWidth] floats (128 KB), stays in L2 while brgemm
  // runs every row of A over it; C's [M, kWidth] column block takes the sum
  // over K one block of rows at a time.
  constexpr int64_t kWidth = 64, kDepth = 512, kBlockRows = 64;
  const int64_t M = a.m, N = a.n, K = a.k;
  TORCH_INTERNAL_ASSERT(K > 0, "long_k_gemm: C is written by the first block of K, so K must be positive");
  const int64_t column_blocks = (N + kWidth - 1) / kWidth;
  at::parallel_for(0, column_blocks, 1, [&](int64_t begin, int64_t end) {
    const PooledArray<float> packed(static_cast<size_t>(kDepth * kWidth));
    for (int64_t block = begin; block < end; ++block) {
      const int64_t n0 = block * kWidth, width = std::min(kWidth, N - n0);
      for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
        const int64_t depth = std::min(kDepth, K - k0);
        for (int64_t k = 0; k < depth; ++k) {
          const float* row = a.b + (k0 + k) * a.ldb + n0;
          std::copy(row, row + width, packed.data() + k * width);
        }
        for (int64_t m0 = 0; m0 < M; m0 += kBlockRows) {
          at::native::cpublas::brgemm(std::min(kBlockRows, M - m0), width, depth, a.lda, width, a.ldc,
                                      /*add_C=*/k0 > 0, a.a + m0 * a.lda + k0, packed.data(),
                                      a.c + m0 * a.ldc + n0, /*is_vnni=*/false);
        }
      }
    }
  });
}

void bf16_product(const Bf16ProductArgs& a) {
  // W^T as vectors of 16 columns, packed once, then vector_tile_product.
  const int64_t M = a.m, N = a.n, K = a.k;
  const int64_t n_stride = a.w_n_stride != 0 ? a.w_n_stride : K, k_stride = a.w_k_stride != 0 ? a.w_k_stride : 1;
  const int64_t vectors = (N + kBf16Vector - 1) / kBf16Vector, elements = bf16_vector_elements(K);
  const PooledArray<c10::BFloat16> packed(static_cast<size_t>(vectors * elements));
  at::parallel_for(0, vectors, 1, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int64_t n0 = v * kBf16Vector;
      pack_bf16_vector(a.w, K, k_stride, n_stride, n0, std::min(kBf16Vector, N - n0), packed.data() + v * elements);
    }
  });
  const std::vector<float> bias = a.bias != nullptr ? bias_sum(a.bias, a.bias2, N) : std::vector<float>();
  vector_tile_product<c10::BFloat16>(M, N, K, a.a, a.lda, packed.data(), elements,
                                     a.bias != nullptr ? bias.data() : nullptr, a.c, a.ldc,
                                     [](const Bf16TileArgs& tile) { bf16_tile(tile); });
}

void recurrence_forward(const RecurrenceForwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, args.shape.dtype, "lstm_ext_recurrence_forward",
                                  [&] { forward_typed<scalar_t>(args); });
}

void ln_recurrence_forward(const LnRecurrenceForwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_ln_recurrence_forward", [&] { ln_forward_typed<scalar_t>(args); });
}

void ln_recurrence_backward(const LnRecurrenceBackwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES(args.dtype, "lstm_ext_ln_recurrence_backward",
                             [&] { ln_backward_typed<scalar_t>(args); });
}

void recurrence_backward(const RecurrenceBackwardArgs& args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, args.shape.dtype, "lstm_ext_recurrence_backward",
                                  [&] { backward_typed<scalar_t>(args); });
}

}  // namespace cpu
}  // namespace lstm_ext
