// Large host buffers kept for reuse (buffer_pool.cpp explains why).
#pragma once

#include <cstddef>

namespace lstm_ext {

// Host memory of at least `bytes`, 64-byte aligned, uninitialised: a kept
// block of the same rounded size when there is one. Give it back with
// pool_give_back(data, pool_block_bytes(bytes)).
void* pool_take(size_t bytes);
void pool_give_back(void* data, size_t bytes);
// The size a request of `bytes` is rounded up to (whole pages).
size_t pool_block_bytes(size_t bytes);
// Frees every kept block; returns the bytes freed.
size_t pool_release_cached();
// Bytes kept now, free for reuse.
size_t pool_cached_bytes();

// count elements from the pool, given back on destruction: a scratch array
// for a scope, or (lstm_ops.cpp) the memory of a pooled tensor.
template <typename T>
class PooledArray {
 public:
  explicit PooledArray(size_t count)
      : bytes_(pool_block_bytes(count * sizeof(T))), data_(static_cast<T*>(pool_take(bytes_))) {}
  ~PooledArray() { pool_give_back(data_, bytes_); }
  PooledArray(const PooledArray&) = delete;
  PooledArray& operator=(const PooledArray&) = delete;
  T* data() const { return data_; }

 private:
  size_t bytes_;
  T* data_;
};

}  // namespace lstm_ext
