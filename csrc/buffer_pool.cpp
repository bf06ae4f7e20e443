// Large host buffers kept for reuse.
//
// With glibc, a block of a few MiB or more is a fresh mmap on nearly every
// call (its dynamic mmap threshold never admits a block as large as the last
// one freed, and stops at 32 MiB), and first-touching its pages costs more
// than filling it: 12 ms of page faults for the 32 MiB weight gradient at
// B=16, I=H=1024, where the product itself takes 5 ms; at B=64, T=100,
// H=512 the forward+backward allocates ~200 MiB this way. So blocks given
// back are kept, up to kCachedBytes in all, and handed out again for a
// request of the same rounded size. Unlike a cache of tensors, a block comes
// back only when its last user frees it (a tensor's deleter), so autograd
// can still steal a fresh gradient into .grad.
#include "buffer_pool.h"

#include <c10/core/impl/alloc_cpu.h>

#include <map>
#include <mutex>

namespace lstm_ext {
namespace {

constexpr size_t kPageBytes = 4096;
constexpr size_t kCachedBytes = size_t(1) << 30;

class BufferPool {
 public:
  void* take(size_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      const auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* data = it->second;
        free_.erase(it);
        cached_ -= bytes;
        return data;
      }
    }
    return c10::alloc_cpu(bytes);
  }

  void give_back(void* data, size_t bytes) {
    if (data == nullptr) return;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + bytes <= kCachedBytes) {
        free_.emplace(bytes, data);
        cached_ += bytes;
        return;
      }
    }
    c10::free_cpu(data);
  }

  size_t release() {
    std::multimap<size_t, void*> blocks;
    size_t bytes = 0;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      bytes = cached_;
      cached_ = 0;
    }
    for (const auto& [size, data] : blocks) c10::free_cpu(data);
    return bytes;
  }

  size_t cached() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // size -> block
  size_t cached_ = 0;
};

// Never destroyed: tensors freed at exit still give their blocks back.
BufferPool& pool() {
  static auto* instance = new BufferPool();
  return *instance;
}

}  // namespace

size_t pool_block_bytes(size_t bytes) { return (bytes + kPageBytes - 1) / kPageBytes * kPageBytes; }
void* pool_take(size_t bytes) { return pool().take(bytes); }
void pool_give_back(void* data, size_t bytes) { pool().give_back(data, bytes); }
size_t pool_release_cached() { return pool().release(); }
size_t pool_cached_bytes() { return pool().cached(); }

}  // namespace lstm_ext
