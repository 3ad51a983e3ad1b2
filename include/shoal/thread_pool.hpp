// shoal/thread_pool.hpp — a persistent work-stealing thread pool.
//
// Data flow of one task:
//
//   submit()/spawn() from a non-worker ──> injection queue (mutex) ─┐
//   spawn() from worker i ───────────────> deque i (Chase–Lev) ─────┤
//                                                                   v
//   worker j: pop own deque ─> take from injection queue ─> steal from a random deque
//             nothing found: spin a while, then sleep on the event count (epoch_)
//
// Every worker owns one detail::WorkStealingDeque (see detail/wsq.hpp for the
// algorithm). Fork-join loops (shoal/parallel.hpp) are built on spawn(): the
// caller pushes "helper" tasks and works itself, so nested loops reuse the same
// workers and never create threads (no oversubscription, no deadlock).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <deque>
#include <thread>
#include <type_traits>
#include <vector>

#include "shoal/detail/wsq.hpp"

namespace shoal {

// Where workers run, like OMP_PROC_BIND: none (the OS decides), compact
// (worker i on the i-th allowed CPU), spread (workers evenly over the allowed CPUs).
enum class Pinning { none, compact, spread };

// "none" | "false" | "compact" | "close" | "true" | "spread" -> Pinning. Throws shoal::Error.
Pinning parse_pinning(const char* text);

namespace detail {
// An intrusive unit of work. run() owns the task: it must free it (or drop its
// reference) before returning. A plain function pointer keeps the deque
// element one word and avoids a virtual call's vtable load.
struct Task {
  void (*run)(Task*);
};
}  // namespace detail

class ThreadPool {
 public:
  // `workers` threads (0 is allowed: fork-join loops then run on the caller).
  // on_start(i) runs first thing on worker i (e.g. a Python initializer),
  // on_exit(i) last thing before it ends.
  explicit ThreadPool(int workers, Pinning pinning = Pinning::none,
                      std::function<void(int)> on_start = {},
                      std::function<void(int)> on_exit = {});
  // Runs every queued task, then joins the workers.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const noexcept { return static_cast<int>(workers_.size()); }

  // Runs fn on a worker. fn must not throw (an escaping exception ends the
  // program, as with std::thread); use async() to get exceptions back.
  // Throws shoal::Error after stop() (except from the pool's own workers,
  // whose tasks are part of the draining) or on a pool without workers.
  void submit(std::function<void()> fn);

  template <class F>
  auto async(F fn) -> std::future<std::invoke_result_t<F>> {
    auto task = std::make_shared<std::packaged_task<std::invoke_result_t<F>()>>(std::move(fn));
    auto fut = task->get_future();
    submit([task] { (*task)(); });
    return fut;
  }

  // Stops accepting submit(); workers finish every queued task and exit.
  // Does not wait. Idempotent.
  void stop() noexcept;
  // stop(), then joins the workers. Idempotent; throws if called from one of
  // this pool's own workers (it would wait for itself).
  void join();
  bool stopped() const noexcept;

  // Index of the calling thread among this pool's workers, or -1.
  int worker_index() const noexcept;

  // Whether this process was forked after the pool was built: the pool's
  // memory came along, its threads did not. Such a pool refuses submit(), and
  // join() and the destructor abandon its threads' handles (they name threads
  // of the parent: joining them is undefined, and a joinable std::thread's
  // destructor ends the program) instead of joining them.
  bool forked_away() const noexcept;

  // The pool the calling thread is a worker of, or nullptr.
  static ThreadPool* current() noexcept;

  // Whether fork-join loops started on this pool's workers run on this pool
  // (default) rather than on the global one. Off for pools that run Python
  // callables (the threads backend): their workers are not for number crunching.
  // relaxed: a configuration flag, no data travels with it.
  void set_hosts_loops(bool on) noexcept { hosts_loops_.store(on, std::memory_order_relaxed); }
  bool hosts_loops() const noexcept { return hosts_loops_.load(std::memory_order_relaxed); }

  // The process-wide pool for fork-join loops: default_concurrency() - 1
  // workers (the calling thread is the last participant), pinned as
  // SHOAL_PROC_BIND says. Created on first use; recreated in a forked child.
  static ThreadPool& global();
  // A process-wide pool whose fork-join loops run on `concurrency` threads;
  // global() when concurrency <= global().size() + 1, else a cached pool of
  // concurrency - 1 workers (for tests and explicit oversubscription).
  static ThreadPool& global_for(int concurrency);
  // SHOAL_NUM_THREADS when set (> 0), else the number of CPUs this process
  // may run on (sched_getaffinity).
  static int default_concurrency();

  // ---- used by shoal/parallel.hpp ----
  // Pushes `count` copies of the task pointer (onto the caller's own deque
  // when it is a worker of this pool, else onto the injection queue) and
  // wakes sleeping workers. Never throws for a stopped pool: fork-join must
  // be able to finish its own work.
  void spawn(detail::Task* task, int count);
  // For a worker of this pool: pops one task from its own deque (nullptr if empty).
  detail::Task* pop_own() noexcept;

 private:
  struct alignas(64) Worker {
    detail::WorkStealingDeque<detail::Task*> deque;
    std::uint64_t rng = 0;  // owner only: victim selection
  };

  void worker_main(int index, std::vector<int> cpus);
  detail::Task* find_task(int index) noexcept;
  bool has_work() const noexcept;
  void wake() noexcept;

  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  std::function<void(int)> on_start_, on_exit_;
  Pinning pinning_;
  std::atomic<bool> hosts_loops_{true};

  std::mutex inject_mutex_;
  std::deque<detail::Task*> inject_;  // guarded by inject_mutex_
  // inject_size_: writers hold inject_mutex_; idle workers read it without the
  // lock to skip locking an empty queue. A stale zero is harmless: the pusher
  // wakes sleepers after pushing (see wake()).
  alignas(64) std::atomic<std::int64_t> inject_size_{0};
  // epoch_: the event count idle workers sleep on. Pushers bump it (release)
  // and notify when sleepers_ > 0. sleepers_: incremented (acq_rel RMW) by a
  // worker before its last look for work, decremented after it wakes; the
  // pusher reads it with an acq_rel RMW after its push, so either the pusher
  // sees the sleeper or the sleeper sees the work: no lost wake-up.
  alignas(64) std::atomic<std::uint32_t> epoch_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  // stopping_: set once by stop(), read by workers (acquire) to exit when idle
  // and by submit() to refuse work.
  alignas(64) std::atomic<bool> stopping_{false};
  std::mutex join_mutex_;  // serialises join()
  bool joined_ = false;    // guarded by join_mutex_
  // The process's fork count (a pthread_atfork child handler adds one) when
  // the pool was built; see forked_away().
  std::uint64_t fork_generation_ = 0;
};

}  // namespace shoal
