// The work-stealing pool: worker loop, injection, sleep/wake, global pools.
// Data flow and the meaning of every atomic: include/shoal/thread_pool.hpp.
#include "shoal/thread_pool.hpp"

#include "shoal/allocation.hpp"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <string>

#include "shoal/check.hpp"
#include "shoal/detail/cpu_relax.hpp"

namespace shoal {

namespace {

// How many times this process's ancestry forked since the library loaded: a
// pthread_atfork child handler adds one (relaxed: only the forking thread
// exists in the child while it runs, and it reads the value itself later).
std::atomic<std::uint64_t> g_fork_generation{0};

void count_fork() noexcept { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }

std::uint64_t fork_generation() noexcept {
  static const int registered = pthread_atfork(nullptr, nullptr, &count_fork);
  (void)registered;
  return g_fork_generation.load(std::memory_order_relaxed);
}

thread_local ThreadPool* tl_pool = nullptr;  // the pool this thread works for
thread_local int tl_index = -1;              // its index there

// How long an idle worker keeps looking for work before it sleeps. A worker
// that sleeps costs a futex wake-up (microseconds) on the next fork; one that
// spins costs a core. Back-to-back loops (the common case) find it spinning.
constexpr int kSpinRounds = 1 << 14;

std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  for (int ncpu = 1024; ncpu <= (1 << 16); ncpu *= 4) {
    cpu_set_t* set = CPU_ALLOC(ncpu);
    SHOAL_CHECK(set != nullptr, "CPU_ALLOC failed");
    std::size_t bytes = CPU_ALLOC_SIZE(ncpu);
    CPU_ZERO_S(bytes, set);
    if (sched_getaffinity(0, bytes, set) == 0) {
      for (int c = 0; c < ncpu; ++c)
        if (CPU_ISSET_S(c, bytes, set)) cpus.push_back(c);
      CPU_FREE(set);
      return cpus;
    }
    int err = errno;
    CPU_FREE(set);
    if (err != EINVAL) throw_errno("sched_getaffinity", err);
  }
  return cpus;
}

void pin_to(int cpu) {
  cpu_set_t* set = CPU_ALLOC(cpu + 1);
  if (set == nullptr) return;
  std::size_t bytes = CPU_ALLOC_SIZE(cpu + 1);
  CPU_ZERO_S(bytes, set);
  CPU_SET_S(cpu, bytes, set);
  // Best effort: a CPU taken away since the pool was created is not an error.
  (void)pthread_setaffinity_np(pthread_self(), bytes, set);
  CPU_FREE(set);
}

// The process-wide pools. Destroyed (joined) at exit; abandoned, not
// destroyed, in a forked child, whose copy has the pools' memory but not
// their threads.
struct GlobalPools {
  std::mutex mu;
  std::unique_ptr<ThreadPool> main;
  std::map<int, std::unique_ptr<ThreadPool>> by_concurrency;
  // fast: readers (any thread) load it acquire; written under mu (release)
  // once the pool is built, and cleared in a forked child.
  std::atomic<ThreadPool*> fast{nullptr};

  GlobalPools() { pthread_atfork(nullptr, nullptr, &GlobalPools::in_child); }
  static GlobalPools& get() {
    static GlobalPools pools;
    return pools;
  }
  static void in_child() {
    GlobalPools& g = get();
    (void)g.main.release();  // NOLINT: deliberately leaked, its threads did not survive fork
    for (auto& [k, p] : g.by_concurrency) (void)p.release();
    g.by_concurrency.clear();
    g.fast.store(nullptr, std::memory_order_relaxed);
    new (&g.mu) std::mutex();  // the parent's lock state means nothing here
  }
};

}  // namespace

Pinning parse_pinning(const char* text) {
  std::string s = text ? text : "";
  if (s.empty() || s == "none" || s == "false") return Pinning::none;
  if (s == "compact" || s == "close" || s == "true" || s == "master" || s == "primary")
    return Pinning::compact;
  if (s == "spread") return Pinning::spread;
  SHOAL_CHECK(false, "unknown pinning '" + s + "': expected none, compact (close) or spread");
  return Pinning::none;
}

ThreadPool::ThreadPool(int workers, Pinning pinning, std::function<void(int)> on_start,
                       std::function<void(int)> on_exit)
    : on_start_(std::move(on_start)), on_exit_(std::move(on_exit)), pinning_(pinning) {
  fork_generation_ = fork_generation();
  SHOAL_CHECK(workers >= 0, "ThreadPool needs workers >= 0, got " + std::to_string(workers));
  workers_.reserve(static_cast<std::size_t>(workers));
  for (int i = 0; i < workers; ++i) {
    workers_.push_back(std::make_unique<Worker>());
    workers_.back()->rng = 0x9E3779B97F4A7C15ull * static_cast<std::uint64_t>(i + 1);
  }
  std::vector<int> cpus;
  if (pinning_ != Pinning::none) cpus = allowed_cpus();
  threads_.reserve(static_cast<std::size_t>(workers));
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this, i, cpus] { worker_main(i, cpus); });
}

ThreadPool::~ThreadPool() { join(); }

void ThreadPool::worker_main(int index, std::vector<int> cpus) {
  tl_pool = this;
  tl_index = index;
  // Named so that the Python side can tell shoal's threads from others when
  // it decides whether to fork (python/shoal/_backend_processes.py: _can_fork).
  (void)pthread_setname_np(pthread_self(), "shoal-pool");
  if (!cpus.empty()) {
    const std::size_t n = cpus.size();
    const std::size_t i = static_cast<std::size_t>(index);
    pin_to(pinning_ == Pinning::compact ? cpus[i % n] : cpus[(i * n / workers_.size()) % n]);
  }
  if (on_start_) on_start_(index);
  for (;;) {
    if (detail::Task* t = find_task(index)) {
      t->run(t);
      continue;
    }
    bool found = false;
    for (int s = 0; s < kSpinRounds && !found; ++s) {
      detail::cpu_relax();
      found = has_work();
    }
    if (found) continue;
    const std::uint32_t e = epoch_.load(std::memory_order_acquire);
    // acq_rel RMW; pairs with the RMW in wake(), see there.
    sleepers_.fetch_add(1, std::memory_order_acq_rel);
    if (has_work()) {
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
      continue;
    }
    if (stopping_.load(std::memory_order_acquire)) {
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
      if (on_exit_) on_exit_(index);
      return;
    }
    epoch_.wait(e, std::memory_order_acquire);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }
}

detail::Task* ThreadPool::find_task(int index) noexcept {
  Worker& self = *workers_[static_cast<std::size_t>(index)];
  if (detail::Task* t = self.deque.pop()) return t;
  if (inject_size_.load(std::memory_order_relaxed) > 0) {
    std::lock_guard<std::mutex> lock(inject_mutex_);
    if (!inject_.empty()) {
      detail::Task* t = inject_.front();
      inject_.pop_front();
      inject_size_.fetch_sub(1, std::memory_order_relaxed);
      return t;
    }
  }
  const std::size_t n = workers_.size();
  if (n > 1) {
    // xorshift64: a random first victim spreads thieves over the deques.
    std::uint64_t x = self.rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    self.rng = x;
    const std::size_t start = static_cast<std::size_t>(x % n);
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t v = (start + k) % n;
      if (v == static_cast<std::size_t>(index)) continue;
      if (detail::Task* t = workers_[v]->deque.steal()) return t;
    }
  }
  return nullptr;
}

bool ThreadPool::has_work() const noexcept {
  if (inject_size_.load(std::memory_order_relaxed) > 0) return true;
  for (const auto& w : workers_)
    if (!w->deque.empty()) return true;
  return false;
}

void ThreadPool::wake() noexcept {
  // An RMW, not a load: RMWs on sleepers_ are totally ordered. If ours comes
  // after a sleeper's increment we read it and wake it; if it comes before,
  // the sleeper's acquiring increment reads ours (or a later RMW of the same
  // release sequence), so our push happens-before its last look for work.
  // No lost wake-up, and no standalone fence (which TSan cannot see).
  if (sleepers_.fetch_add(0, std::memory_order_acq_rel) > 0) {
    epoch_.fetch_add(1, std::memory_order_release);
    epoch_.notify_all();
  }
}

void ThreadPool::spawn(detail::Task* task, int count) {
  if (count <= 0) return;
  if (tl_pool == this) {
    auto& dq = workers_[static_cast<std::size_t>(tl_index)]->deque;
    for (int i = 0; i < count; ++i) dq.push(task);
  } else {
    std::lock_guard<std::mutex> lock(inject_mutex_);
    for (int i = 0; i < count; ++i) inject_.push_back(task);
    inject_size_.fetch_add(count, std::memory_order_relaxed);
  }
  wake();
}

detail::Task* ThreadPool::pop_own() noexcept {
  if (tl_pool != this) return nullptr;
  return workers_[static_cast<std::size_t>(tl_index)]->deque.pop();
}

namespace {
struct FunctionTask : detail::Task {
  explicit FunctionTask(std::function<void()> f) : detail::Task{&FunctionTask::invoke}, fn(std::move(f)) {}
  static void invoke(detail::Task* t) noexcept {  // noexcept: a throwing fn terminates
    std::unique_ptr<FunctionTask> self(static_cast<FunctionTask*>(t));
    self->fn();
  }
  std::function<void()> fn;
};
}  // namespace

void ThreadPool::submit(std::function<void()> fn) {
  SHOAL_CHECK(fn != nullptr, "ThreadPool::submit needs a callable");
  // A worker may still submit while the pool drains: its own deque is drained too.
  SHOAL_CHECK(tl_pool == this || !stopping_.load(std::memory_order_acquire),
              "ThreadPool::submit after stop()");
  SHOAL_CHECK(!workers_.empty(), "ThreadPool::submit on a pool with 0 workers");
  SHOAL_CHECK(!forked_away(), "ThreadPool::submit in a process forked after the pool was built (pid " +
                                  std::to_string(getpid()) + "): its threads stayed in the parent");
  spawn(new FunctionTask(std::move(fn)), 1);
}

void ThreadPool::stop() noexcept {
  stopping_.store(true, std::memory_order_release);
  epoch_.fetch_add(1, std::memory_order_release);
  epoch_.notify_all();
}

bool ThreadPool::stopped() const noexcept { return stopping_.load(std::memory_order_acquire); }

bool ThreadPool::forked_away() const noexcept {
  return fork_generation_ != g_fork_generation.load(std::memory_order_relaxed);
}

void ThreadPool::join() {
  if (forked_away()) {
    // The handles name the parent's threads (seen: SIGSEGV in pthread_join
    // when a forked Python child's garbage collector freed a threads-backend
    // pool). Leak them, and the tasks still queued; join_mutex_ is not
    // touched either, the parent may have held it at the fork.
    if (!threads_.empty()) (new std::vector<std::thread>())->swap(threads_);  // NOLINT: leaked on purpose
    return;
  }
  SHOAL_CHECK(tl_pool != this, "ThreadPool::join called from one of its own workers");
  std::lock_guard<std::mutex> lock(join_mutex_);
  if (joined_) return;
  stop();
  for (auto& t : threads_) t.join();
  joined_ = true;
}

int ThreadPool::worker_index() const noexcept { return tl_pool == this ? tl_index : -1; }

ThreadPool* ThreadPool::current() noexcept { return tl_pool; }

// SHOAL_NUM_THREADS wins: the process backend sets it to cpus / workers in each
// worker so that workers x threads never exceeds the allocation. Otherwise the
// allocation (affinity, cgroup quota, SLURM) decides, never the host's core count.
int ThreadPool::default_concurrency() {
  if (const char* env = std::getenv("SHOAL_NUM_THREADS"); env && *env) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end && *end == '\0' && v > 0 && v < (1 << 20)) return static_cast<int>(v);
  }
  return std::max(1, shoal::default_concurrency());
}

ThreadPool& ThreadPool::global() {
  GlobalPools& g = GlobalPools::get();
  if (ThreadPool* p = g.fast.load(std::memory_order_acquire)) return *p;
  std::lock_guard<std::mutex> lock(g.mu);
  if (!g.main) {
    g.main = std::make_unique<ThreadPool>(default_concurrency() - 1,
                                          parse_pinning(std::getenv("SHOAL_PROC_BIND")));
  }
  g.fast.store(g.main.get(), std::memory_order_release);
  return *g.main;
}

ThreadPool& ThreadPool::global_for(int concurrency) {
  ThreadPool& main = global();
  if (concurrency <= main.size() + 1) return main;
  GlobalPools& g = GlobalPools::get();
  std::lock_guard<std::mutex> lock(g.mu);
  auto& p = g.by_concurrency[concurrency];
  if (!p) p = std::make_unique<ThreadPool>(concurrency - 1);
  return *p;
}

}  // namespace shoal
