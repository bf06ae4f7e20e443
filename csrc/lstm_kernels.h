// Raw-pointer kernels: the pointwise passes, one per backend, and the CPU's
// time loop.
//
// The ATen glue (lstm_ops.cpp) checks, allocates and does the large matrix
// products; these only touch memory through the pointers and strides below.
// Element stride inside a row is always 1.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <cstdint>
#include <vector>

namespace lstm_ext {

// The cells the engine runs: everything but the pointwise maths, the gate
// count and where the biases go is shared between them.
enum class CellKind : int8_t { LSTM, GRU };
constexpr int64_t gate_count(CellKind cell) { return cell == CellKind::LSTM ? 4 : 3; }

// Where one of the [B, H] state tensors lives: element (b, j) at
// data[b * row_stride + j].
template <typename Ptr>
struct RowsView {
  Ptr data;
  int64_t row_stride;
};

// Where the four gate blocks (i, f, g, o) live: element (b, j) of gate k at
// data[b * row_stride + k * gate_stride + j]. A [B, 4H] tensor has gate_stride
// H; a tile of hidden units [j0, j0 + w) of it is the same view moved by j0,
// and a packed [B, 4w] tile has gate_stride w.
template <typename Ptr>
struct GatesView {
  Ptr data;
  int64_t row_stride;
  int64_t gate_stride;
};

using InRows = RowsView<const void*>;
using OutRows = RowsView<void*>;
using InGates = GatesView<const void*>;
using OutGates = GatesView<void*>;

// Forward pass over [batch, hidden] elements: reads the pre-activations
// (plus addend, when its data is not null: the bias with row_stride 0, or a
// precomputed input projection, so that neither needs a pass of its own) and
// c_prev; writes the activated gates, which the backward needs, and c and h.
// gates may be the same memory as preact or addend (each element is read
// before it is written). On the CPU a null gates.data (inference, without
// addend) writes c and h only.
struct PointwiseForwardArgs {
  c10::ScalarType dtype;
  int64_t batch;
  int64_t hidden;
  InGates preact;
  InGates addend;
  InRows c_prev;
  OutGates gates;
  OutRows h;
  OutRows c;
  // h is rounded to bfloat16 after this pass (a bfloat16 layer's products
  // on bfloat16 operands): tanh may be lstm_tanh_rounded.
  bool rounded = false;
  // Zoneout (CPU; not with addend or rounded): c and h are the zoned state
  // c~ + d_c (c_prev - c~) and h~ + d_h (h_prev - h~) of
  // layernorm_lstm_pointwise.h, d per element (a rate: a row of stride 0).
  bool zoneout = false;
  InRows h_prev{nullptr, 0};
  InRows zoneout_c{nullptr, 0};
  InRows zoneout_h{nullptr, 0};
};

// Backward pass: from the activated gates, c_prev, c and the gradients of h and
// c, writes the gradients of the pre-activations and of c_prev (which may be
// the same memory as grad_c).
struct PointwiseBackwardArgs {
  c10::ScalarType dtype;
  int64_t batch;
  int64_t hidden;
  InGates gates;
  InRows c_prev;
  InRows c;
  InRows grad_h;
  InRows grad_c;
  OutGates grad_gates;
  OutRows grad_c_prev;
};

// The GRU's passes (gru_pointwise.h), gates r, z, n. Forward: preact holds
// the summed input and recurrent pre-activations of r and z and the input
// projection of n; hidden_n_raw the recurrent product's n part, W_hn h, to
// which bias_hn ([H], never null: zeros without biases) is added. Writes the
// activated gates, hidden_n = W_hn h + b_hn (both may alias their inputs)
// and h.
struct GruPointwiseForwardArgs {
  c10::ScalarType dtype;
  int64_t batch;
  int64_t hidden;
  InGates preact;
  InRows hidden_n_raw;
  const void* bias_hn;
  InRows h_prev;
  OutGates gates;
  OutRows hidden_n;
  OutRows h;
};

// Backward: from the activated gates, hidden_n, h_prev and the gradient of h,
// writes the gradients of the input projection (grad_input_gates) and of the
// recurrent product (grad_hidden_gates: r and z the same, n times r), and
// adds grad_h * z to grad_h_prev (read, then written).
struct GruPointwiseBackwardArgs {
  c10::ScalarType dtype;
  int64_t batch;
  int64_t hidden;
  InGates gates;
  InRows hidden_n;
  InRows h_prev;
  InRows grad_h;
  OutGates grad_input_gates;
  OutGates grad_hidden_gates;
  OutRows grad_h_prev;
};

namespace cpu {
// The LayerNorm LSTM's row passes (layernorm_lstm_pointwise.h), float or
// double, over rows [0, rows) on the calling thread: unlike the LSTM's
// pointwise passes each reads a whole row, because its layer norms take the
// statistics of all 4H (or H) entries of the row. With layer_norm false the
// same passes are the plain LSTM with zoneout. Row strides: 4H for the gate
// rows, H for the state rows.
//
// What every pass reads besides its buffers: the gains and shift (layer norm
// only) and zoneout's d, mask_c/mask_h ([rows, H], 0 or 1) or, where a mask
// is null, the constant rate_c/rate_h (eval, or none: 0).
struct LnCellParams {
  bool layer_norm;
  const void* gamma_hh;  // [4H]
  const void* gamma_c;   // [H]
  const void* beta_c;    // [H]
  const void* mask_c;
  const void* mask_h;
  double rate_c, rate_h;
  // The same with the masks moved to row `row` (rows of H elements of itemsize bytes).
  LnCellParams at_row(int64_t row, int64_t hidden, int64_t itemsize) const {
    LnCellParams moved = *this;
    const int64_t offset = row * hidden * itemsize;
    if (mask_c != nullptr) moved.mask_c = static_cast<const char*>(mask_c) + offset;
    if (mask_h != nullptr) moved.mask_h = static_cast<const char*>(mask_h) + offset;
    return moved;
  }
};

// Forward. gates holds the input part of the pre-activations on entry (LN:
// LN(W_ih x; g_ih) + b; without: W_ih x + b + W_hh h_prev) and the activated
// gates on exit; hh (LN only) W_hh h_prev on entry, its normalized x^ on
// exit; writes c and h (zoneout applied) and stats (LN: per row rstd of hh,
// mean and rstd of c~).
struct LnRowsForwardArgs {
  c10::ScalarType dtype;
  int64_t rows, hidden;
  double eps;
  LnCellParams cell;
  void* gates;
  void* hh;
  const void* c_prev;
  const void* h_prev;
  void* c;
  void* h;
  void* stats;  // [rows, 3]
};

// Backward. From the activated gates, hh's x^, stats, c_prev, the complete
// gradient grad_h of h (the output's plus the next step's recurrent one)
// and grad_c of c (in place: the gradient of c_prev on exit), writes the
// pre-activations' gradient grad_pre (the input part's and the bias's), the
// raw recurrent product's grad_hh (LN only: without it that is grad_pre),
// adds zoneout's d_h * grad_h to grad_h_prev when it is not null, and adds
// this call's share of the gains' and shift's gradients into grad_gamma_hh
// [4H], grad_gamma_c [H], grad_beta_c [H] (LN only). With gamma_row_stride
// > 0 (the CUDA pass, whose rows run in parallel) row r adds into its own
// row r of each, gamma_row_stride elements apart, for the caller to sum:
// no atomics, the same sums on every run.
struct LnRowsBackwardArgs {
  c10::ScalarType dtype;
  int64_t rows, hidden;
  LnCellParams cell;
  const void* gates;
  const void* hh_norm;
  const void* stats;
  const void* c_prev;
  const void* grad_h;
  void* grad_c;
  void* grad_pre;
  void* grad_hh;
  void* grad_h_prev;
  void* grad_gamma_hh;
  void* grad_gamma_c;
  void* grad_beta_c;
  int64_t gamma_row_stride = 0;
};

// The time loop of one LayerNorm LSTM layer and direction on the CPU: per
// step the recurrent product over (row block, panel of 64 columns) tasks,
// then the row pass over blocks of rows; two parallel regions per step.
// Buffers [T, B, ...] contiguous (or packed rows [N, ...] with batch_sizes);
// the cell's masks [T, B, H] ([N, H]) or null.
// Forward (with layer norm: the plain LSTM's zoneout forward is
// recurrence_forward's): gates, hh_norm and stats as LnRowsForwardArgs for
// every step (when keep is false, hh_norm is [B, 4H], stats [B, 3] and cells
// [2, B, H]: nothing kept for a backward); output and cells receive h and c.
struct LnRecurrenceForwardArgs {
  c10::ScalarType dtype;
  int64_t steps, batch, hidden;
  bool reverse;
  double eps;
  bool keep;
  LnCellParams cell;
  const void* weight_hh;  // [4H, H]
  const void* h0;
  const void* c0;
  void* gates;
  void* hh_norm;
  void* stats;
  void* output;
  void* cells;
  // Variable lengths, as RecurrenceShape's (reverse false): step t over its
  // batch_sizes[t] rows after those of the steps before it, in every buffer.
  const int64_t* batch_sizes = nullptr;
};
void ln_recurrence_forward(const LnRecurrenceForwardArgs& args);

// Backward through time: grad_h [T, B, H] holds each step's output gradient
// (h_n's added at the last step) and receives the recurrent contributions;
// grad_c [B, H] grad_c_n in, the gradient of c_0 out; grad_h0 [B, H] zeros
// in, the gradient of h_0 out; grad_pre and grad_hh (LN; null without, when
// grad_pre serves) [T, B, 4H]; grad_gamma_hh, grad_gamma_c, grad_beta_c (LN)
// written.
struct LnRecurrenceBackwardArgs {
  c10::ScalarType dtype;
  int64_t steps, batch, hidden;
  bool reverse;
  LnCellParams cell;
  const void* weight_hh;
  const void* c0;
  const void* gates;
  const void* hh_norm;
  const void* stats;
  const void* cells;
  void* grad_h;
  void* grad_c;
  void* grad_h0;
  void* grad_pre;
  void* grad_hh;
  void* grad_gamma_hh;
  void* grad_gamma_c;
  void* grad_beta_c;
  const int64_t* batch_sizes = nullptr;  // as the forward's
};
void ln_recurrence_backward(const LnRecurrenceBackwardArgs& args);

// Chosen at run time for the CPU's capability (DEFAULT, AVX2, AVX512), as
// ATen's own kernels are.
void pointwise(const PointwiseForwardArgs& args);
void pointwise(const PointwiseBackwardArgs& args);
void pointwise(const GruPointwiseForwardArgs& args);
void pointwise(const GruPointwiseBackwardArgs& args);
void rows_pass(const LnRowsForwardArgs& args);
void rows_pass(const LnRowsBackwardArgs& args);

// The time loop of one layer and direction on the CPU. Per step, each task
// takes a panel of hidden units (all four of their gates) and a block of rows:
// its products with the recurrent weight's packed panel (the forward's
// accumulate into that block of the step's gates), then the pointwise pass on
// the block while it is still in cache. One parallel region per step; no ATen
// call inside the loop.
//
// Forward. gates [T, B, 4H]: the input projections (biases folded in) on
// entry, the activated gates on exit. output [T, B, H] receives h of every
// step; cells [T, B, H] c of every step, or, when keep_cells is false (no
// backward will read them), cells is [2, B, H] and step s writes its c into
// row block s % 2. All contiguous.
//
// The GRU (cell == GRU) runs the same loop over 3 gates: gates [T, B, 3H]
// hold the input projections with b_ih and, for r and z, b_hh folded in; the
// recurrent product of r and z accumulates into them, its n part goes to
// hidden_n ([T, B, H] every step's, or [B, H] when keep_cells is false), to
// which the pointwise pass adds bias_hn. h0 is the only state: c0 and cells
// are unused.
//
// An LSTM with projections (proj > 0, torch.nn.LSTM's proj_size P) carries
// r_t = W_hr (o_t * tanh(c_t)) from step to step: weight_hh is [4H, P], h0
// and output have P columns, and each step is two parallel regions: the
// recurrent product and pointwise pass over panels of the H units, writing
// o * tanh(c) into hidden ([B, H] scratch), then the projection over panels
// of the P outputs.
struct RecurrenceShape {
  c10::ScalarType dtype;
  int64_t steps;
  int64_t batch;
  int64_t hidden;
  bool reverse;  // steps run from T - 1 down to 0
  CellKind cell = CellKind::LSTM;
  int64_t proj = 0;
  // Variable lengths (a PackedSequence's layout): steps entries, non-increasing,
  // the first equal to batch; step t runs over the first batch_sizes[t]
  // sequences, whose rows follow those of the steps before it in every
  // [rows, ...] buffer (gates, output, cells, hidden_n, grad_h, grad_gates).
  // reverse must be false (the caller reverses each sequence instead).
  const int64_t* batch_sizes = nullptr;
  // The width of the state that recurs: P with projections, else H.
  int64_t recurrent() const { return proj > 0 ? proj : hidden; }
};

// Where each step's rows are: step t's B rows at row t * B, or (variable
// lengths, packed layout) its batch_sizes[t] rows after those of the steps
// before it.
struct StepLayout {
  std::vector<int64_t> offset, rows;
  StepLayout(int64_t steps, int64_t batch, const int64_t* batch_sizes) : offset(steps), rows(steps) {
    int64_t next = 0;
    for (int64_t t = 0; t < steps; ++t) {
      rows[t] = batch_sizes != nullptr ? batch_sizes[t] : batch;
      offset[t] = next;
      next += rows[t];
    }
  }
  explicit StepLayout(const RecurrenceShape& shape) : StepLayout(shape.steps, shape.batch, shape.batch_sizes) {}
};

struct RecurrenceForwardArgs {
  RecurrenceShape shape;
  const void* weight_hh;  // [4H, H]
  const void* h0;         // [B, H]
  const void* c0;         // [B, H]
  void* gates;
  void* output;
  void* cells;
  bool keep_cells = true;
  // gates in the panel-interleaved order of recurrence_gate_order (the input
  // projection's columns permuted so), which lets each task's four gates be
  // one product instead of four (the GRU's r and z one instead of two); the
  // activated gates are left in that order.
  bool gates_interleaved = false;
  void* hidden_n = nullptr;        // GRU
  const void* bias_hn = nullptr;   // GRU: [H], never null
  const void* weight_hr = nullptr; // projections: [P, H]
  void* hidden = nullptr;          // projections: [B, H] scratch
  // A bfloat16 layer on bf16_products() (float state, no projections): the
  // recurrent product runs on bfloat16 copies of W_hh and h with bf16_tile;
  // each step's h is rounded to bfloat16 into output_bf16 [.., H], and the
  // float output, [2, B, H], holds the rounded values of the last two steps
  // (step s in slot s % 2), the state the next step's pointwise pass reads.
  const void* weight_hh_bf16 = nullptr;
  const void* h0_bf16 = nullptr;
  void* output_bf16 = nullptr;
  // The input projection inside the loop (float under float_tiles()): when
  // project_input, each task first forms its block of x_t W_ih^T + biases,
  // then adds h_{t-1} W_hh^T to it, so the block is in L1 when the product
  // and the pointwise pass read it (a whole-sequence projection formed
  // before the loop is in memory at each step's first load). Without
  // keep_cells gates is then one step's [B, gates * H] scratch, not
  // [T, B, ...]: inference forms no [T, B, 4H] projection. Row b of step t's input is
  // input + t * input_step_stride + b * input_row_stride, or (variable
  // lengths) input + (offset[t] + b) * input_row_stride.
  bool project_input = false;
  const void* input = nullptr;  // null where input_size is 0
  int64_t input_size = 0;
  int64_t input_step_stride = 0;
  int64_t input_row_stride = 0;
  const void* weight_ih = nullptr;  // [gates * H, I], the standard gate order
  const void* bias = nullptr;       // [gates * H] or null, the standard order
  const void* bias2 = nullptr;      // added to bias (the GRU: its projection2), or null
  // Zoneout (the LSTM without projections or bfloat16 products, gates not
  // interleaved): each step's pointwise pass zones c and h out with d_c and
  // d_h, [rows, H] in the rows' order (those of gates), or where a mask is
  // null its rate. The layer norm operator's backward takes it from there
  // (its state: the activated gates, the zoned c and h).
  bool zoneout = false;
  const void* zoneout_mask_c = nullptr;
  const void* zoneout_mask_h = nullptr;
  double zoneout_rate_c = 0.0;
  double zoneout_rate_h = 0.0;
};
// Hidden units per panel of the CPU time loop.
constexpr int64_t kRecurrencePanel = 16;
// Column c of the panel-interleaved gates holds the standard column
// recurrence_gate_order(c, H, gates): panel p's gates * w columns are its w
// units of the first gate, then of the next (LSTM: i, f, g, o; GRU: r, z, n).
inline int64_t recurrence_gate_order(int64_t c, int64_t hidden, int64_t gates = 4) {
  const int64_t j0 = c / (gates * kRecurrencePanel) * kRecurrencePanel;
  const int64_t width = hidden - j0 < kRecurrencePanel ? hidden - j0 : kRecurrencePanel;
  const int64_t in_panel = c - gates * j0;
  return (in_panel / width) * hidden + j0 + in_panel % width;
}
void recurrence_forward(const RecurrenceForwardArgs& args);

// Backward through time. grad_h [T, B, H] holds the gradient of each step's
// output and receives the recurrent contributions (and grad_h_n [B, H], when
// not null, at the last step); grad_c [B, H] holds grad_c_n on entry and the
// gradient of c_0 on exit; grad_gates [T, B, 4H] receives the gradients of the
// pre-activations. The gradient of h_0 is grad_gates[first step] @ W_hh,
// left to the caller. With projections grad_h is [T, B, P], the gradient of
// each step's r (from which the caller forms W_hr's), and each step first
// completes it over panels of P, then forms grad_hidden = grad_r @ W_hr
// ([B, H] scratch) and the pointwise pass over panels of H.
struct RecurrenceBackwardArgs {
  RecurrenceShape shape;
  const void* weight_hh;  // [4H, H]
  const void* c0;         // [B, H]
  const void* gates;      // [T, B, 4H], activated
  const void* cells;      // [T, B, H]
  void* grad_h;
  const void* grad_h_n;  // may be null
  void* grad_c;
  void* grad_gates;
  // grad_h_n's strides in elements (row, column), -1 for a contiguous
  // [B, R]: autograd's gradient of h_n.sum() is one value broadcast
  // (strides 0), read as it is rather than copied out first.
  int64_t grad_h_n_row_stride = -1, grad_h_n_column_stride = 1;
  const void* h0 = nullptr;          // GRU
  const void* output = nullptr;      // GRU
  const void* hidden_n = nullptr;    // GRU
  void* grad_hidden_gates = nullptr; // GRU
  void* grad_h0 = nullptr;           // GRU
  const void* weight_hr = nullptr;   // projections: [P, H]
  void* grad_hidden = nullptr;       // projections: [B, H] scratch
  // A bfloat16 LSTM layer on bf16_products() (no projections): the
  // recurrent product of the gradient, grad_gates @ W_hh, on bfloat16
  // operands (bf16_tile), each step's grad_gates rounded to bfloat16 into
  // grad_gates_bf16 ([2, B, 4H]: step s in slot s % 2), as torch.nn.LSTM's
  // bfloat16 backward (oneDNN) does; grad_gates itself stays float32.
  const void* weight_hh_bf16 = nullptr;  // [4H, H]
  void* grad_gates_bf16 = nullptr;
};
void recurrence_backward(const RecurrenceBackwardArgs& args);

// C[M, N] = [bias +] A @ B on the calling thread, row-major; A read
// transposed when transpose_a; bias [N] may be null. For the
// products of small problems, where the BLAS's fixed cost per call dominates
// (MKL's small-matrix path takes ~10 us on AMD CPUs even for a few thousand
// multiply-adds).
struct SmallGemmArgs {
  c10::ScalarType dtype;
  int64_t m, n, k;
  const void* a;
  int64_t lda;
  bool transpose_a;
  const void* b;                    // element (k, n) at b[k * b_k_stride + n * b_n_stride]:
  int64_t b_k_stride, b_n_stride;   // row-major, or a transposed weight (copied row-major first)
  const void* bias;   // [N] or null
  const void* bias2;  // [N] added to bias (bias_ih + bias_hh), or null
  void* c;
  int64_t ldc;
};
void small_gemm(const SmallGemmArgs& args);
// Up to this many multiply-adds a product goes to small_gemm whatever its
// rows; above it, only over few rows of A (lstm_ops.cpp's product), and then
// small_gemm splits it into blocks of columns between threads.
constexpr int64_t kSmallProductFmas = int64_t(1) << 18;

// C[M, N] (+)= A^T @ B for A [K, M] and B [K, N], row-major with leading
// dimensions, float or double, as K outer products of a row of A and a row of
// B accumulated in SIMD registers: the weight gradients of small problems
// (M = 4H, K = T*B), for which brgemm would need A copied transposed first.
// Per CPU capability, like the pointwise passes. Reads whole SIMD vectors
// past the M columns of a row of A where they stay within A's extent
// (K - 1) * lda + M.
struct OuterProductArgs {
  c10::ScalarType dtype;
  int64_t m, n, k;
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  void* c;
  int64_t ldc;
  bool accumulate;
};
void outer_products(const OuterProductArgs& args);

// out[c] = sum over r of data[r * cols + c], accumulated in float or double,
// on the calling thread: the bias gradient of small problems, where ATen's
// reduction costs more to set up than to run.
void column_sums(c10::ScalarType dtype, int64_t rows, int64_t cols, const void* data, void* out);

// C[M, N] = [bias +] A[M, K] @ B for large float products, in parallel: B
// (element (k, n) at b[k * b_k_stride + n * b_n_stride], so a weight or its
// transpose) packed into panels of 64 columns, each (64 rows, panel) tile one
// brgemm call. On AMD CPUs MKL's sgemm reaches 100-165 GFLOP/s on two cores
// for the input projections here, this 165-225.
struct PackedGemmArgs {
  int64_t m, n, k;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t b_k_stride, b_n_stride;
  const float* bias;   // [N] or null
  const float* bias2;  // [N] added to bias, or null
  float* c;
  int64_t ldc;
};
void packed_gemm(const PackedGemmArgs& args);

// dst[c * ld_dst + r] = src[r * ld_src + c] for a float [rows, cols] matrix,
// in 16 x 16 SIMD blocks, in parallel over blocks of rows: the operands and
// results of long_k_gemm. With dst_bf16 the result goes there instead,
// rounded to bfloat16 (a bfloat16 layer's gradients of the gates, as the A
// of its weight gradients). Per CPU capability, like the pointwise passes.
struct TransposeArgs {
  int64_t rows, cols;
  const float* src;
  int64_t ld_src;
  float* dst;
  int64_t ld_dst;
  c10::BFloat16* dst_bf16 = nullptr;
};
void transpose(const TransposeArgs& args);

// C[M, N] = [bias + bias2 +] A @ W^T for A [M, K] (row stride lda) and W
// [N, K] (row stride ldw; a weight as it is stored), float or double, for
// few rows of A (a T = 1 layer's or a cell's products): each element one dot
// product over K in a fixed order, the columns split between threads, so
// the result does not depend on the thread count (MKL's sgemm's does at 5-7
// and 9-11 rows) and W needs no transposed copy. Per CPU capability.
struct RowDotsArgs {
  c10::ScalarType dtype;
  int64_t m, n, k;
  const void* a;
  int64_t lda;
  const void* w;
  int64_t ldw;
  const void* bias;   // [N] or null
  const void* bias2;  // [N] or null (only with bias)
  void* c;
  int64_t ldc;
  bool accumulate = false;  // C += A @ W^T (without biases)
};
void row_dots(const RowDotsArgs& args);
// Rows of A above which products leave row_dots for the BLAS.
constexpr int64_t kRowDotsMaxRows = 16;

// C[M, N] = A[M, K] @ B[K, N] for float, all row-major, for a long K and a
// short M: a layer's weight gradients over all its steps, sequence^T @
// grad_gates (K = T*B). Threads split N into blocks of 64 columns; each copies
// its block of B 512 rows at a time into L2 and runs brgemm over all rows of A
// on the copy. On AMD CPUs MKL's sgemm of grad_gates^T @ sequence reaches
// 140-190 GFLOP/s on two cores here, this 200-210 (transposes included: 170-196).
struct LongKGemmArgs {
  int64_t m, n, k;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
};
void long_k_gemm(const LongKGemmArgs& args);

// bfloat16 products with float32 results on AVX512-BF16's dot-product
// instruction, which does two multiply-adds per float lane (twice a float
// FMA's work): the products of bfloat16 layers, whose state stays float32.
// B comes in "vectors" of kBf16Vector columns, each ceil(K/2) rows of
// kBf16Vector pairs (B[k][n], B[k+1][n]) (the VNNI layout), zeros past K and
// past the vector's own columns: pack_bf16_vector.
constexpr int64_t kBf16Vector = 16;
inline int64_t bf16_vector_elements(int64_t k) { return (k + 1) / 2 * 2 * kBf16Vector; }
// Columns [n0, n0 + count) (count <= kBf16Vector) of B, element (k, n) at
// b[k * k_stride + n * n_stride], as one vector at out.
inline void pack_bf16_vector(const c10::BFloat16* b, int64_t K, int64_t k_stride, int64_t n_stride, int64_t n0,
                             int64_t count, c10::BFloat16* out) {
  for (int64_t k = 0; k < (K + 1) / 2 * 2; ++k) {
    c10::BFloat16* pair_row = out + k / 2 * 2 * kBf16Vector + k % 2;
    for (int64_t n = 0; n < kBf16Vector; ++n) {
      pair_row[2 * n] = k < K && n < count ? b[k * k_stride + (n0 + n) * n_stride] : c10::BFloat16(0.0f);
    }
  }
}
// The same for float_tile's vectors (K rows of kBf16Vector floats).
inline void pack_float_vector(const float* b, int64_t K, int64_t k_stride, int64_t n_stride, int64_t n0,
                              int64_t count, float* out) {
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t n = 0; n < kBf16Vector; ++n) {
      out[k * kBf16Vector + n] = n < count ? b[k * k_stride + (n0 + n) * n_stride] : 0.0f;
    }
  }
}
// C (+)= A[rows, k] @ B for up to four vectors of B: vector v's columns go
// to c[v] (row stride ldc[v]), its first columns[v] stored, added to what is
// there when accumulate[v]. On the calling thread.
template <typename T>
struct TileArgs {
  int64_t rows, k;
  const T* a;
  int64_t lda;
  int vectors;
  const T* b[4];
  float* c[4];
  int64_t ldc[4];
  int64_t columns[4];
  bool accumulate[4];
  // Where accumulate is false: the vector's start, the same for every row
  // (a bias; kBf16Vector floats), or null for zeros.
  const float* init[4];
  // A second product into the same accumulators when k2 > 0: C (+)= A @ B +
  // A2[rows, k2] @ B2 (row stride lda2; B2's vectors as B's), the time
  // loop's input projection and recurrent product in one pass over the
  // block, rather than two tiles with the block stored and reloaded between
  // them: torch.nn.LSTM's forward time / ours (AMD EPYC, T=100) went from
  // 0.84-0.92 to 0.93-0.96 in bfloat16 at B=16, H=128, 0.91-0.94 to
  // 0.95-0.99 at B=64, H=512, and float32 gained 1-3%.
  int64_t k2 = 0;
  const T* a2 = nullptr;
  int64_t lda2 = 0;
  const T* b2[4];

  // The per-vector fields are set for the first `vectors` only (the kernels
  // read no further): the time loop builds tiles per task, where zeroing
  // the arrays had cost ~1% of a bfloat16 forward at B=16, H=128.
  TileArgs(int64_t rows, int64_t k, const T* a, int64_t lda, int vectors)
      : rows(rows), k(k), a(a), lda(lda), vectors(vectors) {}
};
using Bf16TileArgs = TileArgs<c10::BFloat16>;
void bf16_tile(const Bf16TileArgs& args);
// The same for float A and B, each vector of B K rows of kBf16Vector floats
// (element (k, n) at k * kBf16Vector + n), one FMA per row, k and vector: the float time loop's
// recurrent product under the AVX2 and AVX512 kernels, where ATen's brgemm
// call costs more than the product at one step's sizes.
using FloatTileArgs = TileArgs<float>;
inline int64_t float_vector_elements(int64_t k) { return k * kBf16Vector; }
void float_tile(const FloatTileArgs& args);
// Whether float_tile runs here: the AVX2 or AVX512 kernels are active.
bool float_tiles();
// Whether float_tile also runs the float products that brgemm runs
// elsewhere: the LSTM backward's recurrent product (one panel of 16 columns
// a task), packed_gemm (grad_input over all steps) and the LayerNorm LSTM's
// per-step products. Under the AVX2 kernels, where it was measured faster
// (docs/design.md); the AVX512 kernels' blocks of one vector hold 6
// accumulators, below the FMA latency, and their other products keep
// brgemm until measured.
bool float_tile_all_products();
// h [rows, width] (row stride ld_h) rounded to bfloat16 (nearest even) into
// out (row stride ld_out), and h replaced by the rounded values. Needs
// bf16_products().
struct Bf16RoundArgs {
  int64_t rows, width;
  float* h;
  int64_t ld_h;
  c10::BFloat16* out;
  int64_t ld_out;
  bool write_back = true;  // false: h keeps its float values
};
void bf16_round(const Bf16RoundArgs& args);
// Whether bf16_tile runs here: the AVX512 kernels are active and the CPU has
// AVX512-BF16. Elsewhere bfloat16 layers take float32 products.
bool bf16_products();
// C[M, N] = [bias + bias2 +] A @ W^T for bfloat16 A [M, K] (row stride lda)
// and W [N, K] (element (n, k) at w[n * w_n_stride + k * w_k_stride]; zero
// strides: row-major), float32 C (row stride ldc) and biases: W packed once,
// then tasks of (64 rows, 64 columns) in parallel, K in chunks that keep a
// task's operands in L2. A bfloat16 layer's input projection and its
// backward's products over all steps. Needs bf16_products().
struct Bf16ProductArgs {
  int64_t m, n, k;
  const c10::BFloat16* a;
  int64_t lda;
  const c10::BFloat16* w;
  const float* bias;   // [N] or null
  const float* bias2;  // [N] or null
  float* c;
  int64_t ldc;
  int64_t w_n_stride = 0, w_k_stride = 0;
};
void bf16_product(const Bf16ProductArgs& args);

// The layer norm of the LayerNorm LSTM's input part, rows [0, rows) of
// width columns on the calling thread (float or double): forward, out =
// (x - mean) * rstd * gamma [+ beta], writing each row's mean and rstd;
// backward, grad_x = rstd * (g - mean(g) - x^ * mean(g * x^)) with g =
// grad_out * gamma, adding grad_out * x^ into grad_gamma. ATen's layer_norm
// costs ~60 us to set up at the course's size, a third of a layer's call.
struct LnInputArgs {
  c10::ScalarType dtype;
  int64_t rows, width;
  double eps;
  const void* x;
  const void* gamma;
  const void* beta;  // or null
  void* out;
  void* mean;
  void* rstd;
};
struct LnInputBackwardArgs {
  c10::ScalarType dtype;
  int64_t rows, width;
  const void* grad_out;
  const void* x;
  const void* mean;
  const void* rstd;
  const void* gamma;
  void* grad_x;
  void* grad_gamma;
  // The column sums of grad_out added here (the shift's gradient: the
  // LayerNorm LSTM's bias), or null. Summed in the same pass, they save a
  // second read of grad_out ([T*B, 4H]) by an ATen reduction.
  void* grad_beta = nullptr;
};
void layer_norm_rows(const LnInputArgs& args);
void layer_norm_rows(const LnInputBackwardArgs& args);

// out[n] = 1 where the 24 high bits of word n % 4 of Philox4x32-10(counter
// n / 4, key seed) fall below threshold (rate * 2^24), else 0, for n in
// [begin, end) (begin a multiple of 4); float, double, bfloat16 or half.
// Counter-based, so any range is computed on its own: zoneout's masks.
// Per CPU capability, like the pointwise passes (16 draws a SIMD step).
struct PhiloxMaskArgs {
  c10::ScalarType dtype;
  void* out;
  int64_t begin, end;
  uint64_t seed;
  uint32_t threshold;
};
void philox_mask(const PhiloxMaskArgs& args);

// The capability whose kernels run now, and a switch for tests and benchmarks.
const char* kernel_capability();
// Returns false when name is unknown, not compiled in, or unsupported here.
bool set_kernel_capability(const char* name);
// Every capability compiled into this build, comma-separated.
const char* compiled_capabilities();
}  // namespace cpu

#ifdef LSTM_EXT_WITH_CUDA
namespace cuda {
// Launched on the current CUDA stream of the current device.
void pointwise(const PointwiseForwardArgs& args);
void pointwise(const PointwiseBackwardArgs& args);
void pointwise(const GruPointwiseForwardArgs& args);
void pointwise(const GruPointwiseBackwardArgs& args);
// The LayerNorm LSTM's row passes (cpu::rows_pass's contract), float or
// double, one thread block per row; the backward's gain gradients per row
// (gamma_row_stride > 0).
void rows_pass(const cpu::LnRowsForwardArgs& args);
void rows_pass(const cpu::LnRowsBackwardArgs& args);
}  // namespace cuda
#endif

}  // namespace lstm_ext
