// Host buffers kept for reuse (buffer_pool.cpp explains why and the policy).
#pragma once

#include <cstddef>

namespace lstm_ext {

// A block of host memory, 64-byte aligned, uninitialised; `bytes` is its
// real size, which may exceed the request (a kept block serves any request
// up to twice smaller).
struct PoolBlock {
  void* data = nullptr;
  size_t bytes = 0;
};

PoolBlock pool_take(size_t bytes);
void pool_give_back(PoolBlock block);
// Frees every kept block (large ones are unmapped: the memory goes back to
// the system); returns the bytes freed.
size_t pool_release_cached();
// Bytes kept now, free for reuse.
size_t pool_cached_bytes();
// The most bytes the pool may keep (LSTM_EXT_POOL_MB; 0: nothing is kept).
size_t pool_limit_bytes();

// count elements from the pool, given back on destruction: a scratch array
// for a scope, or (lstm_ops.cpp) the memory of a pooled tensor.
template <typename T>
class PooledArray {
 public:
  explicit PooledArray(size_t count) : block_(pool_take(count * sizeof(T))) {}
  ~PooledArray() { pool_give_back(block_); }
  PooledArray(const PooledArray&) = delete;
  PooledArray& operator=(const PooledArray&) = delete;
  T* data() const { return static_cast<T*>(block_.data); }

 private:
  PoolBlock block_;
};

}  // namespace lstm_ext
