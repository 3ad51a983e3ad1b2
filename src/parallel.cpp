// The non-template half of shoal/parallel.hpp: choosing the pool, forking,
// waiting. Data flow: see the top of include/shoal/parallel.hpp.
#include "shoal/parallel.hpp"

#include "shoal/detail/cpu_relax.hpp"

namespace shoal::detail {

namespace {
// The caller spins this long for the last chunks before it sleeps: joins of
// short loops complete within the spin, long ones do not care about a futex.
constexpr int kJoinSpin = 1 << 12;

// The pool whose loop this thread is running as the loop's caller (it is not
// one of that pool's workers). Nested loops in its bodies default to the same
// pool, exactly as they do on the workers: no other pool's threads join in.
thread_local ThreadPool* tl_caller_pool = nullptr;

struct CallerPoolScope {
  ThreadPool* saved;
  explicit CallerPoolScope(ThreadPool* p) noexcept : saved(tl_caller_pool) { tl_caller_pool = p; }
  ~CallerPoolScope() { tl_caller_pool = saved; }
  CallerPoolScope(const CallerPoolScope&) = delete;
  CallerPoolScope& operator=(const CallerPoolScope&) = delete;
};
}  // namespace

Plan plan_loop(ThreadPool* pool, int threads) {
  ThreadPool* p = pool;
  if (p == nullptr) {
    ThreadPool* cur = ThreadPool::current();
    if (cur == nullptr) cur = tl_caller_pool;
    p = (cur != nullptr && cur->hosts_loops()) ? cur : &ThreadPool::global_for(threads);
  }
  const bool inside = p->worker_index() >= 0;
  const int others = p->stopped() ? 0 : (inside ? p->size() - 1 : p->size());
  const int want = threads > 0 ? threads : others + 1;
  return Plan{p, std::max(1, std::min(want, others + 1))};
}

void ForkJoin::execute(ThreadPool& pool, int helpers) {
  pool.spawn(this, helpers);
  {
    CallerPoolScope scope(pool.worker_index() >= 0 ? tl_caller_pool : &pool);
    participate_(*this, ctx_);
  }
  // A worker's helpers went onto its own deque; those still there found no
  // thief (everyone busy, e.g. a nested loop): take them back now instead of
  // leaving no-op tasks behind.
  if (pool.worker_index() >= 0) {
    for (int k = 0; k < helpers; ++k) {
      Task* t = pool.pop_own();
      if (t == nullptr) break;
      if (t != this) {  // not ours (our helpers were all stolen): put it back, stop
        pool.spawn(t, 1);
        break;
      }
      release();
    }
  }
  for (int s = 0; s < kJoinSpin && finished_.load(std::memory_order_acquire) == 0; ++s) cpu_relax();
  while (finished_.load(std::memory_order_acquire) == 0) finished_.wait(0, std::memory_order_acquire);
  // finished_ (acquire) makes error_ and failed_ of every participant visible.
  // The error is moved out, not copied: no participant touches error_ after
  // finished_, and a helper that drops the last reference later must not be
  // the thread that destroys the exception while the caller still reads it
  // (TSan reported that handover, through libstdc++'s uninstrumented
  // exception refcount, as a race on the message's memory).
  const bool failed = failed_.load(std::memory_order_relaxed);
  std::exception_ptr error = failed ? std::move(error_) : nullptr;
  release();
  if (failed) std::rethrow_exception(error);
}

}  // namespace shoal::detail
