// A CPU allocator for PyTorch that keeps freed large blocks for the next allocation of the
// same size (simclr/block_cache.py builds and installs it).
//
// Why: a training step allocates and frees the same large tensors every time. glibc maps
// blocks above 32 MB afresh and unmaps them on free, so the kernel faults in and zeroes their
// pages again at every step (system time 25-300 ms per step of the small CNN on 2 cores);
// telling glibc to keep every block instead fragments its heap without bound. Here blocks of
// at least `min_bytes` are mapped from the kernel directly and kept when freed, by exact size
// rounded up to 2 MB, never more than `max_idle_bytes` of them: the least recently freed are
// unmapped first. Smaller blocks go to PyTorch's own alloc_cpu / free_cpu, as before.

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <pthread.h>
#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace {

constexpr std::size_t kRound = std::size_t(2) << 20;  // huge-page multiples (THP_MEM_ALLOC_ENABLE)

class BlockCache final : public c10::Allocator {
 public:
  std::atomic<std::size_t> min_bytes{0};  // read without the lock by every allocation
  std::size_t max_idle_bytes = 0;
  bool huge_pages = false;  // madvise(MADV_HUGEPAGE), as PyTorch does with THP_MEM_ALLOC_ENABLE=1
  std::size_t idle_bytes = 0, hits = 0, misses = 0;
  std::mutex mu;

  c10::DataPtr allocate(std::size_t n) override {
    void* p = n >= min_bytes ? take(round_up(n)) : c10::alloc_cpu(n);
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // One deleter for every pointer, so raw_allocate / raw_deallocate (oneDNN's path) work too.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static void release(void* p);

  void give_back(void* p) {
    std::unique_lock<std::mutex> lock(mu);
    auto it = live_.find(p);
    if (it == live_.end()) {  // a small block
      lock.unlock();
      c10::free_cpu(p);
      return;
    }
    std::size_t size = it->second;
    live_.erase(it);
    idle_.emplace_front(size, p);
    by_size_.emplace(size, idle_.begin());
    idle_bytes += size;
    Idle evicted;
    while (idle_bytes > max_idle_bytes) {  // the least recently freed go back to the system
      auto& [old_size, old_p] = idle_.back();
      auto range = by_size_.equal_range(old_size);
      for (auto i = range.first; i != range.second; ++i) {
        if (i->second->second == old_p) {
          by_size_.erase(i);
          break;
        }
      }
      idle_bytes -= old_size;
      evicted.splice(evicted.end(), idle_, std::prev(idle_.end()));
    }
    lock.unlock();
    for (auto& [old_size, old_p] : evicted) munmap(old_p, old_size);
  }

  // hits, misses, idle bytes, live large blocks
  void stats(std::size_t* out) {
    std::lock_guard<std::mutex> lock(mu);
    out[0] = hits;
    out[1] = misses;
    out[2] = idle_bytes;
    out[3] = live_.size();
  }

 private:
  using Idle = std::list<std::pair<std::size_t, void*>>;  // most recently freed first
  Idle idle_;
  std::multimap<std::size_t, Idle::iterator> by_size_;
  std::unordered_map<void*, std::size_t> live_;  // handed out, of at least min_bytes

  // Straight from the kernel, 2 MB aligned (huge pages need it), so that a block handed back
  // really leaves the process; in glibc's heap it would stay and fragment it.
  void* map(std::size_t size) const {
    std::size_t span = size + kRound;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK_WITH(OutOfMemoryError, raw != MAP_FAILED, "not enough memory: you tried to allocate ", size,
                     " bytes (simclr's CPU block cache; SIMCLR_BLOCK_CACHE_MIB=0 turns it off).");
    auto start = reinterpret_cast<std::uintptr_t>(raw);
    auto aligned = round_up(start);
    if (aligned > start) munmap(raw, aligned - start);
    std::size_t tail = start + span - (aligned + size);
    if (tail) munmap(reinterpret_cast<void*>(aligned + size), tail);
    void* p = reinterpret_cast<void*>(aligned);
    if (huge_pages) madvise(p, size, MADV_HUGEPAGE);
    return p;
  }

  static std::size_t round_up(std::size_t n) { return (n + kRound - 1) / kRound * kRound; }

  void* take(std::size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = by_size_.find(size);
      if (it != by_size_.end()) {
        void* p = it->second->second;
        idle_.erase(it->second);
        by_size_.erase(it);
        idle_bytes -= size;
        ++hits;
        live_.emplace(p, size);
        return p;
      }
      ++misses;
    }
    void* p = map(size);  // outside the lock: mapping may take a while
    std::lock_guard<std::mutex> lock(mu);
    live_.emplace(p, size);
    return p;
  }
};

BlockCache cache;
bool installed = false;

void BlockCache::release(void* p) { cache.give_back(p); }

// A fork (DataLoader workers) while another thread holds the lock must not leave the child's
// copy locked forever.
void before_fork() { cache.mu.lock(); }
void after_fork() { cache.mu.unlock(); }

}  // namespace

extern "C" {

// Make this the CPU allocator of the process. Blocks allocated before keep their own deleter.
int simclr_block_cache_install(std::size_t min_bytes, std::size_t max_idle_bytes) {
  std::lock_guard<std::mutex> lock(cache.mu);
  cache.min_bytes = min_bytes;
  cache.max_idle_bytes = max_idle_bytes;
  if (!installed) {
    const char* thp = std::getenv("THP_MEM_ALLOC_ENABLE");
    cache.huge_pages = thp != nullptr && std::strcmp(thp, "1") == 0;
    pthread_atfork(before_fork, after_fork, after_fork);
    c10::SetCPUAllocator(&cache, /*priority=*/1);
    installed = true;
  }
  return 1;
}

// hits, misses, idle bytes, live large blocks
void simclr_block_cache_stats(std::size_t* out) { cache.stats(out); }
}
