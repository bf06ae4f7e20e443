// Run-time choice among the per-capability builds of lstm_cpu_kernels.cpp.
//
// The default is the best capability that both this build and this CPU have,
// lowered by ATEN_CPU_CAPABILITY (default, avx2, avx512) as ATen's own is.
// (ATen's get_cpu_capability is not exported to extensions.)
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>

#include <c10/util/Exception.h>

#include "lstm_kernels.h"

namespace lstm_ext {
namespace cpu {

#define LSTM_EXT_DECLARE_CAPABILITY(CAP)                      \
  namespace CAP {                                             \
  void pointwise_forward(const PointwiseForwardArgs& args);   \
  void pointwise_backward(const PointwiseBackwardArgs& args); \
  void gru_pointwise_forward(const GruPointwiseForwardArgs& args);   \
  void gru_pointwise_backward(const GruPointwiseBackwardArgs& args); \
  void outer_products(const OuterProductArgs& args);          \
  void transpose(const TransposeArgs& args);                  \
  void row_dots(const RowDotsArgs& args);                     \
  void ln_rows_forward(const LnRowsForwardArgs& args);        \
  void ln_rows_backward(const LnRowsBackwardArgs& args);      \
  void philox_mask(const PhiloxMaskArgs& args);               \
  void layer_norm_rows(const LnInputArgs& args);              \
  void layer_norm_rows_backward(const LnInputBackwardArgs& args); \
  }

LSTM_EXT_DECLARE_CAPABILITY(DEFAULT)
#ifdef LSTM_EXT_HAVE_AVX2
LSTM_EXT_DECLARE_CAPABILITY(AVX2)
namespace AVX2 {
void float_tile(const FloatTileArgs& args);
}
#endif
#ifdef LSTM_EXT_HAVE_AVX512
LSTM_EXT_DECLARE_CAPABILITY(AVX512)
namespace AVX512 {
void bf16_tile(const Bf16TileArgs& args);
void bf16_round(const Bf16RoundArgs& args);
void float_tile(const FloatTileArgs& args);
}
#endif

namespace {

struct KernelTable {
  const char* name;
  int rank;  // the matching at::native::CPUCapability value
  void (*forward)(const PointwiseForwardArgs&);
  void (*backward)(const PointwiseBackwardArgs&);
  void (*gru_forward)(const GruPointwiseForwardArgs&);
  void (*gru_backward)(const GruPointwiseBackwardArgs&);
  void (*outer_products)(const OuterProductArgs&);
  void (*transpose)(const TransposeArgs&);
  void (*row_dots)(const RowDotsArgs&);
  void (*ln_rows_forward)(const LnRowsForwardArgs&);
  void (*ln_rows_backward)(const LnRowsBackwardArgs&);
  void (*philox_mask)(const PhiloxMaskArgs&);
  void (*layer_norm_rows)(const LnInputArgs&);
  void (*layer_norm_rows_backward)(const LnInputBackwardArgs&);
  void (*bf16_tile)(const Bf16TileArgs&);  // AVX512 only, and they still need AVX512-BF16
  void (*bf16_round)(const Bf16RoundArgs&);
  void (*float_tile)(const FloatTileArgs&);  // AVX2 and AVX512
  bool float_tile_all_products;                 // see lstm_kernels.h
};

const KernelTable kTables[] = {
    {"DEFAULT", 0, DEFAULT::pointwise_forward, DEFAULT::pointwise_backward, DEFAULT::gru_pointwise_forward,
     DEFAULT::gru_pointwise_backward, DEFAULT::outer_products,
     DEFAULT::transpose, DEFAULT::row_dots, DEFAULT::ln_rows_forward, DEFAULT::ln_rows_backward,
     DEFAULT::philox_mask, DEFAULT::layer_norm_rows, DEFAULT::layer_norm_rows_backward, nullptr, nullptr, nullptr,
     false},
#ifdef LSTM_EXT_HAVE_AVX2
    {"AVX2", 1, AVX2::pointwise_forward, AVX2::pointwise_backward, AVX2::gru_pointwise_forward,
     AVX2::gru_pointwise_backward, AVX2::outer_products,
     AVX2::transpose, AVX2::row_dots, AVX2::ln_rows_forward, AVX2::ln_rows_backward,
     AVX2::philox_mask, AVX2::layer_norm_rows, AVX2::layer_norm_rows_backward, nullptr, nullptr, AVX2::float_tile,
     /*float_tile_all_products=*/true},
#endif
#ifdef LSTM_EXT_HAVE_AVX512
    {"AVX512", 2, AVX512::pointwise_forward, AVX512::pointwise_backward, AVX512::gru_pointwise_forward,
     AVX512::gru_pointwise_backward, AVX512::outer_products,
     AVX512::transpose, AVX512::row_dots, AVX512::ln_rows_forward, AVX512::ln_rows_backward,
     AVX512::philox_mask, AVX512::layer_norm_rows, AVX512::layer_norm_rows_backward, AVX512::bf16_tile, AVX512::bf16_round,
     AVX512::float_tile, /*float_tile_all_products=*/false},
#endif
};
constexpr int kNumTables = sizeof(kTables) / sizeof(kTables[0]);

// What this CPU can run: 0 DEFAULT, 1 AVX2, 2 AVX512 (ATen's requirements).
int supported_rank() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return 2;
  }
  if (fma && __builtin_cpu_supports("avx2")) return 1;
#endif
  return 0;
}

int requested_rank() {
  const char* env = std::getenv("ATEN_CPU_CAPABILITY");
  if (env == nullptr) return 2;
  std::string name(env);
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (name == "default") return 0;
  if (name == "avx2") return 1;
  return 2;
}

const KernelTable* default_table() {
  const int rank = std::min(supported_rank(), requested_rank());
  const KernelTable* best = &kTables[0];
  for (const auto& t : kTables) {
    if (t.rank <= rank && t.rank >= best->rank) best = &t;
  }
  return best;
}

std::atomic<const KernelTable*>& active() {
  static std::atomic<const KernelTable*> table{default_table()};
  return table;
}

}  // namespace

void pointwise(const PointwiseForwardArgs& args) { active().load(std::memory_order_relaxed)->forward(args); }

void pointwise(const PointwiseBackwardArgs& args) { active().load(std::memory_order_relaxed)->backward(args); }

void pointwise(const GruPointwiseForwardArgs& args) { active().load(std::memory_order_relaxed)->gru_forward(args); }

void pointwise(const GruPointwiseBackwardArgs& args) {
  active().load(std::memory_order_relaxed)->gru_backward(args);
}

void outer_products(const OuterProductArgs& args) {
  active().load(std::memory_order_relaxed)->outer_products(args);
}

void transpose(const TransposeArgs& args) { active().load(std::memory_order_relaxed)->transpose(args); }

void row_dots(const RowDotsArgs& args) { active().load(std::memory_order_relaxed)->row_dots(args); }

void rows_pass(const LnRowsForwardArgs& args) { active().load(std::memory_order_relaxed)->ln_rows_forward(args); }

void rows_pass(const LnRowsBackwardArgs& args) { active().load(std::memory_order_relaxed)->ln_rows_backward(args); }

void philox_mask(const PhiloxMaskArgs& args) { active().load(std::memory_order_relaxed)->philox_mask(args); }

void layer_norm_rows(const LnInputArgs& args) { active().load(std::memory_order_relaxed)->layer_norm_rows(args); }

void layer_norm_rows(const LnInputBackwardArgs& args) {
  active().load(std::memory_order_relaxed)->layer_norm_rows_backward(args);
}

bool bf16_products() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  static const bool cpu_has_bf16 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return cpu_has_bf16 && active().load(std::memory_order_relaxed)->bf16_tile != nullptr;
#else
  return false;
#endif
}

void bf16_tile(const Bf16TileArgs& args) {
  const auto tile = active().load(std::memory_order_relaxed)->bf16_tile;
  TORCH_INTERNAL_ASSERT(tile != nullptr && bf16_products(), "bf16_tile: needs AVX512-BF16 and the AVX512 kernels");
  tile(args);
}

void bf16_round(const Bf16RoundArgs& args) {
  const auto round = active().load(std::memory_order_relaxed)->bf16_round;
  TORCH_INTERNAL_ASSERT(round != nullptr && bf16_products(), "bf16_round: needs AVX512-BF16 and the AVX512 kernels");
  round(args);
}

bool float_tiles() { return active().load(std::memory_order_relaxed)->float_tile != nullptr; }

bool float_tile_all_products() { return active().load(std::memory_order_relaxed)->float_tile_all_products; }

void float_tile(const FloatTileArgs& args) {
  const auto tile = active().load(std::memory_order_relaxed)->float_tile;
  TORCH_INTERNAL_ASSERT(tile != nullptr, "float_tile: needs the AVX2 or AVX512 kernels");
  tile(args);
}

const char* kernel_capability() { return active().load()->name; }

bool set_kernel_capability(const char* name) {
  const int rank = supported_rank();
  for (const auto& t : kTables) {
    if (std::strcmp(t.name, name) == 0 && t.rank <= rank) {
      active().store(&t);
      return true;
    }
  }
  return false;
}

const char* compiled_capabilities() {
  static const std::string names = [] {
    std::string s;
    for (int k = 0; k < kNumTables; ++k) {
      if (k) s += ",";
      s += kTables[k].name;
    }
    return s;
  }();
  return names.c_str();
}

}  // namespace cpu
}  // namespace lstm_ext
