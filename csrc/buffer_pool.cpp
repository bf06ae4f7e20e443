// Host buffers kept for reuse.
//
// Why: with glibc, a block of a few MiB or more is a fresh mmap on nearly
// every call, and first-touching its pages costs more than filling it: 12 ms
// of page faults for the 32 MiB weight gradient at B=16, I=H=1024, where the
// product itself takes 5 ms; at B=64, T=100, H=512 a forward+backward
// allocates ~200 MiB this way. A block given back is therefore kept and
// handed out again. It comes back only when its last user frees it (a
// tensor's deleter), so autograd can still steal a fresh gradient into .grad.
//
// Policy (docs/design.md, "The buffer pool"), so that what is kept comes back
// when shapes change:
//  * best fit: a request takes the smallest kept block of at least its size
//    and at most twice it, so sequences of varying length share blocks;
//  * the pool keeps at most as many bytes as were ever in use at once (its
//    working set; a fixed shape is served entirely from kept blocks), and at
//    most LSTM_EXT_POOL_MB MiB (default 1024; 0 keeps nothing);
//  * over that, the least recently given back blocks are freed first, and a
//    block not taken again within kMaxIdleTakes requests is freed too;
//  * blocks of kMappedMinBytes or more are mapped with mmap and unmapped when
//    freed, so freeing one (eviction, empty_cache()) returns its memory to
//    the system; glibc's heap would keep it.
#include "buffer_pool.h"

#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#define LSTM_EXT_POOL_MMAP 1
#endif

namespace lstm_ext {
namespace {

constexpr size_t kPageBytes = 4096;
constexpr size_t kMappedMinBytes = size_t(1) << 20;
constexpr size_t kDefaultLimitMiB = 1024;
// A fixed-shape training step takes a few dozen blocks; a block idle for
// this many requests belongs to a shape that is no longer used.
constexpr uint64_t kMaxIdleTakes = 4096;

size_t round_up(size_t bytes) { return (bytes + kPageBytes - 1) / kPageBytes * kPageBytes; }

size_t limit_from_environment() {
  const char* text = std::getenv("LSTM_EXT_POOL_MB");
  if (text == nullptr || *text == '\0') return kDefaultLimitMiB << 20;
  char* end = nullptr;
  const unsigned long long mib = std::strtoull(text, &end, 10);
  TORCH_CHECK_VALUE(end != text && *end == '\0', "lstm_ext: LSTM_EXT_POOL_MB must be a whole number of MiB "
                    "(0 turns the buffer pool off), got '", text, "'");
  return static_cast<size_t>(mib) << 20;
}

void* allocate(size_t bytes) {
#ifdef LSTM_EXT_POOL_MMAP
  if (bytes >= kMappedMinBytes) {
    void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(data != MAP_FAILED, "lstm_ext: out of memory: could not map ", bytes, " bytes");
    return data;
  }
#endif
  return c10::alloc_cpu(bytes);
}

void deallocate(void* data, size_t bytes) {
#ifdef LSTM_EXT_POOL_MMAP
  if (bytes >= kMappedMinBytes) {
    munmap(data, bytes);
    return;
  }
#endif
  c10::free_cpu(data);
}

class BufferPool {
 public:
  PoolBlock take(size_t bytes) {
    bytes = round_up(bytes == 0 ? 1 : bytes);
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      ++clock_;
      const auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        const PoolBlock block{it->second.data, it->first};
        free_.erase(it);
        cached_ -= block.bytes;
        note_in_use(block.bytes);
        return block;
      }
    }
    void* data = allocate(bytes);  // outside the lock: a fresh mapping can take a while
    const std::lock_guard<std::mutex> lock(mutex_);
    note_in_use(bytes);
    return {data, bytes};
  }

  void give_back(PoolBlock block) {
    if (block.data == nullptr) return;
    std::multimap<size_t, Kept> evicted;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      in_use_ -= block.bytes;
      if (block.bytes <= keep_limit()) {
        free_.emplace(block.bytes, Kept{block.data, clock_});
        cached_ += block.bytes;
        block.data = nullptr;
      }
      evict_locked(evicted);
    }
    if (block.data != nullptr) deallocate(block.data, block.bytes);
    for (const auto& [bytes, kept] : evicted) deallocate(kept.data, bytes);
  }

  size_t release() {
    std::multimap<size_t, Kept> blocks;
    size_t bytes = 0;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      bytes = cached_;
      cached_ = 0;
      // The working set starts again from what is in use now.
      peak_in_use_ = in_use_;
    }
    for (const auto& [size, kept] : blocks) deallocate(kept.data, size);
    return bytes;
  }

  size_t cached() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  size_t limit() const { return limit_; }

 private:
  struct Kept {
    void* data;
    uint64_t given_back_at;  // clock_ then
  };

  void note_in_use(size_t bytes) {
    in_use_ += bytes;
    if (in_use_ > peak_in_use_) peak_in_use_ = in_use_;
  }

  size_t keep_limit() const { return peak_in_use_ < limit_ ? peak_in_use_ : limit_; }

  // Moves into `evicted` the blocks idle too long, then the least recently
  // given back ones until what is kept fits the limit. The free list holds
  // tens of blocks, so a scan is cheap.
  void evict_locked(std::multimap<size_t, Kept>& evicted) {
    const size_t limit = keep_limit();
    for (auto it = free_.begin(); it != free_.end();) {
      if (clock_ - it->second.given_back_at > kMaxIdleTakes) {
        cached_ -= it->first;
        evicted.insert(*it);
        it = free_.erase(it);
      } else {
        ++it;
      }
    }
    while (cached_ > limit) {
      auto oldest = free_.begin();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second.given_back_at < oldest->second.given_back_at) oldest = it;
      }
      cached_ -= oldest->first;
      evicted.insert(*oldest);
      free_.erase(oldest);
    }
  }

  const size_t limit_ = limit_from_environment();
  std::mutex mutex_;
  std::multimap<size_t, Kept> free_;  // size -> block
  size_t cached_ = 0, in_use_ = 0, peak_in_use_ = 0;
  uint64_t clock_ = 0;  // counts requests
};

// Never destroyed: tensors freed at exit still give their blocks back.
BufferPool& pool() {
  static auto* instance = new BufferPool();
  return *instance;
}

}  // namespace

PoolBlock pool_take(size_t bytes) { return pool().take(bytes); }
void pool_give_back(PoolBlock block) { pool().give_back(block); }
size_t pool_release_cached() { return pool().release(); }
size_t pool_cached_bytes() { return pool().cached(); }
size_t pool_limit_bytes() { return pool().limit(); }

}  // namespace lstm_ext
