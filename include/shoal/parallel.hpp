// shoal/parallel.hpp — OpenMP-style fork-join loops on shoal::ThreadPool.
//
//   shoal::parallel_for(0, n, [&](std::int64_t i) { y[i] = 2 * x[i]; });
//   double s = shoal::parallel_reduce(0, n, 0.0,
//       [&](std::int64_t b, std::int64_t e, double acc) { for (; b < e; ++b) acc += x[b]; return acc; },
//       std::plus<>{});
//
// Data flow of one loop (the caller is always a participant):
//
//   caller: ForkJoin job {next chunk, pending chunks, body}  ──spawn k helpers──> pool
//      │                                                  (own deque if the caller is a
//      │                                                   worker, else injection queue)
//      ├─ participate: claim chunk (fetch_add) → run body → … until none left
//      ├─ take back helpers still on its own deque (nested loops: no one was free)
//      └─ wait until pending == 0 (spin, then futex) → combine partials → rethrow error
//   helper on worker j: participate the same way, then drop its reference
//
// A helper that starts after every chunk is claimed finds nothing and leaves,
// so the caller never waits for helpers that did not start: nested loops
// cannot deadlock, and never run on more threads than the pool has.
//
// Deterministic reductions: the range is cut into blocks whose size depends
// only on the range (or on the grain given), each block's partial result is
// stored at its index, and the partials are combined in a fixed pairwise tree.
// The result is then bit-identical for any number of threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "shoal/check.hpp"
#include "shoal/thread_pool.hpp"

namespace shoal {

struct LoopOptions {
  std::int64_t grain = 0;      // iterations per chunk; 0 chooses (about 8 chunks per thread)
  int threads = 0;             // threads including the caller; 0: all of the pool's
  ThreadPool* pool = nullptr;  // nullptr: the caller's own pool if it is a worker, else
                               // ThreadPool::global_for(threads)
};

struct ReduceOptions {
  std::int64_t grain = 0;  // deterministic: block size (0: range / 1024, rounded up)
  int threads = 0;
  ThreadPool* pool = nullptr;
  bool deterministic = false;  // bit-identical result for any thread count
};

namespace detail {

// Number of blocks a deterministic reduction cuts its range into when no grain is given.
inline constexpr std::int64_t kDeterministicBlocks = 1024;
// At most this many blocks (one stored partial each) with an explicit grain.
inline constexpr std::int64_t kMaxDeterministicBlocks = std::int64_t{1} << 24;
// Chunks per participant in dynamic scheduling: enough to even out imbalance.
inline constexpr std::int64_t kChunksPerThread = 8;

class ForkJoin : public Task {
 public:
  using Participate = void (*)(ForkJoin&, void* ctx) noexcept;

  ForkJoin(std::int64_t begin, std::int64_t end, std::int64_t chunk, int helpers,
           Participate participate, void* ctx) noexcept
      : Task{&ForkJoin::run_helper},
        begin_(begin),
        end_(end),
        chunk_(chunk),
        nchunks_((end - begin + chunk - 1) / chunk),
        participate_(participate),
        ctx_(ctx),
        pending_(nchunks_),
        refs_(1 + helpers) {}

  // Claims the next chunk. relaxed suffices: chunks are disjoint, and what a
  // body reads was published before the helper got the task (deque release /
  // injection mutex).
  bool claim(std::int64_t& index, std::int64_t& b, std::int64_t& e) noexcept {
    index = next_.fetch_add(1, std::memory_order_relaxed);
    if (index >= nchunks_) return false;
    b = begin_ + index * chunk_;
    e = std::min(b + chunk_, end_);
    return true;
  }
  bool failed() const noexcept { return failed_.load(std::memory_order_relaxed); }
  // First exception wins; every unclaimed chunk is claimed and counted done at once.
  void fail(std::exception_ptr error) noexcept {
    if (!failed_.exchange(true, std::memory_order_relaxed)) error_ = std::move(error);
    const std::int64_t old = next_.exchange(nchunks_, std::memory_order_relaxed);
    if (old < nchunks_) complete(nchunks_ - old);
  }
  // A participant reports `chunks` finished. acq_rel: the RMW chain on
  // pending_ carries every participant's writes (results, error_) to the one
  // that reaches zero, whose release store of finished_ hands them to the caller.
  void complete(std::int64_t chunks) noexcept {
    if (chunks == 0) return;
    if (pending_.fetch_sub(chunks, std::memory_order_acq_rel) == chunks) {
      finished_.store(1, std::memory_order_release);
      finished_.notify_all();
    }
  }

  // The caller's side: spawn helpers, participate, wait, rethrow. Consumes the
  // caller's reference.
  void execute(ThreadPool& pool, int helpers);

 private:
  static void run_helper(Task* t) noexcept {
    auto* job = static_cast<ForkJoin*>(t);
    job->participate_(*job, job->ctx_);
    job->release();
  }
  void release() noexcept {
    // acq_rel: the last owner sees every other owner's last use before deleting.
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  const std::int64_t begin_, end_, chunk_, nchunks_;
  const Participate participate_;
  void* const ctx_;  // the caller's frame: touched only after a successful claim
  std::exception_ptr error_;  // written by the first failing participant (failed_ guards)
  // next_: every participant fetch_adds it to claim a chunk. Its own line:
  // it is the one contended word.
  alignas(64) std::atomic<std::int64_t> next_{0};
  // pending_: chunks not yet finished; participants subtract (see complete()).
  alignas(64) std::atomic<std::int64_t> pending_;
  // finished_: 0 -> 1 once by whoever finishes the last chunk; the caller waits on it.
  std::atomic<std::uint32_t> finished_{0};
  // failed_: set by the first participant whose body threw; read by the others
  // to skip work and by the caller after finished_ (acquire) to rethrow.
  std::atomic<bool> failed_{false};
  // refs_: the caller plus one per spawned helper copy; the last release frees the job.
  std::atomic<int> refs_;
};

template <class Body>
inline void invoke_range(Body& body, std::int64_t b, std::int64_t e) {
  if constexpr (std::is_invocable_v<Body&, std::int64_t, std::int64_t>) {
    body(b, e);
  } else {
    static_assert(std::is_invocable_v<Body&, std::int64_t>,
                  "parallel_for body must be callable as body(i) or body(begin, end)");
    for (std::int64_t i = b; i < e; ++i) body(i);
  }
}

template <class Body>
void for_participant(ForkJoin& job, void* ctx) noexcept {
  std::int64_t index = 0, b = 0, e = 0, done = 0;
  while (job.claim(index, b, e)) {
    ++done;
    if (job.failed()) continue;
    try {
      invoke_range(*static_cast<Body*>(ctx), b, e);
    } catch (...) {
      job.fail(std::current_exception());
    }
  }
  job.complete(done);
}

template <class T, class Body, class Combine>
struct ReduceState {
  Body& body;
  Combine& combine;
  const T& identity;
  std::vector<T> partials;  // deterministic: one per block; else one per participant
  std::atomic<int> used{0};  // plain mode: participants fetch_add a slot (relaxed: the
                             // slot's contents travel with complete()'s release)
  bool deterministic;
};

template <class T, class Body, class Combine>
T reduce_range(Body& body, Combine& combine, const T& identity, std::int64_t b, std::int64_t e) {
  if constexpr (std::is_invocable_r_v<T, Body&, std::int64_t, std::int64_t, T>) {
    return body(b, e, identity);
  } else {
    static_assert(std::is_invocable_r_v<T, Body&, std::int64_t>,
                  "parallel_reduce body must be callable as body(begin, end, init) -> T or body(i) -> T");
    T acc = identity;
    for (std::int64_t i = b; i < e; ++i) acc = combine(std::move(acc), body(i));
    return acc;
  }
}

template <class T, class Body, class Combine>
void reduce_participant(ForkJoin& job, void* ctx) noexcept {
  using State = ReduceState<T, Body, Combine>;
  std::int64_t index = 0, b = 0, e = 0, done = 0;
  State* st = nullptr;
  std::optional<T> local;
  while (job.claim(index, b, e)) {
    ++done;
    if (job.failed()) continue;
    st = static_cast<State*>(ctx);
    try {
      T part = reduce_range<T>(st->body, st->combine, st->identity, b, e);
      if (st->deterministic)
        st->partials[static_cast<std::size_t>(index)] = std::move(part);
      else
        local = local ? st->combine(std::move(*local), std::move(part)) : std::move(part);
    } catch (...) {
      job.fail(std::current_exception());
    }
  }
  if (local) {
    try {
      st->partials[static_cast<std::size_t>(st->used.fetch_add(1, std::memory_order_relaxed))] =
          std::move(*local);
    } catch (...) {
      job.fail(std::current_exception());
    }
  }
  job.complete(done);
}

// Picks the pool and the number of helpers for a loop of `chunks_wanted` participants.
struct Plan {
  ThreadPool* pool;
  int participants;  // including the caller
};
Plan plan_loop(ThreadPool* pool, int threads);

// Combines partials[0..n) in a fixed pairwise tree: the shape depends on n only.
template <class T, class Combine>
T tree_combine(std::vector<T>& p, Combine& combine) {
  std::size_t n = p.size();
  while (n > 1) {
    const std::size_t half = n / 2;
    for (std::size_t i = 0; i < half; ++i) p[i] = combine(std::move(p[2 * i]), std::move(p[2 * i + 1]));
    if (n % 2) p[half] = std::move(p[n - 1]);
    n = half + n % 2;
  }
  return std::move(p[0]);
}

}  // namespace detail

// Runs body over [begin, end): body(i) per index, or body(b, e) per chunk.
// The first exception thrown by a body is rethrown here (the other chunks are
// skipped). Nested calls from inside a body reuse the same workers.
template <class Body>
void parallel_for(std::int64_t begin, std::int64_t end, Body&& body, LoopOptions opts = {}) {
  if (end <= begin) return;
  SHOAL_CHECK(opts.grain >= 0, "parallel_for: grain must be >= 0");
  SHOAL_CHECK(opts.threads >= 0, "parallel_for: threads must be >= 0");
  using B = std::remove_reference_t<Body>;
  const std::int64_t n = end - begin;
  const detail::Plan plan = detail::plan_loop(opts.pool, opts.threads);
  const std::int64_t chunk =
      opts.grain > 0 ? opts.grain
                     : std::max<std::int64_t>(1, (n + plan.participants * detail::kChunksPerThread - 1) /
                                                     (plan.participants * detail::kChunksPerThread));
  const std::int64_t nchunks = (n + chunk - 1) / chunk;
  const int helpers = static_cast<int>(std::min<std::int64_t>(plan.participants - 1, nchunks - 1));
  if (helpers <= 0) {  // serial: no job, no atomics
    B& b = body;
    if constexpr (std::is_invocable_v<B&, std::int64_t, std::int64_t>) {
      for (std::int64_t lo = begin; lo < end; lo += chunk) b(lo, std::min(lo + chunk, end));
    } else {
      detail::invoke_range(b, begin, end);
    }
    return;
  }
  auto* job = new detail::ForkJoin(begin, end, chunk, helpers, &detail::for_participant<B>,
                                   static_cast<void*>(std::addressof(body)));
  job->execute(*plan.pool, helpers);
}

template <class Body>
void parallel_for(std::int64_t begin, std::int64_t end, Body&& body, std::int64_t grain) {
  LoopOptions o;
  o.grain = grain;
  parallel_for(begin, end, std::forward<Body>(body), o);
}

// Reduces over [begin, end): body(b, e, init) -> T accumulates a chunk onto
// init (TBB's form), or body(i) -> T gives one value; combine(T, T) -> T must
// be associative. With opts.deterministic the result does not depend on the
// number of threads (fixed blocks, fixed pairwise combine order).
template <class T, class Body, class Combine>
T parallel_reduce(std::int64_t begin, std::int64_t end, T identity, Body&& body, Combine&& combine,
                  ReduceOptions opts = {}) {
  if (end <= begin) return identity;
  SHOAL_CHECK(opts.grain >= 0, "parallel_reduce: grain must be >= 0");
  SHOAL_CHECK(opts.threads >= 0, "parallel_reduce: threads must be >= 0");
  using B = std::remove_reference_t<Body>;
  using C = std::remove_reference_t<Combine>;
  const std::int64_t n = end - begin;
  const detail::Plan plan = detail::plan_loop(opts.pool, opts.threads);
  std::int64_t chunk;
  if (opts.deterministic)
    chunk = opts.grain > 0 ? opts.grain
                           : std::max<std::int64_t>(1, (n + detail::kDeterministicBlocks - 1) /
                                                           detail::kDeterministicBlocks);
  else
    chunk = opts.grain > 0 ? opts.grain
                           : std::max<std::int64_t>(1, (n + plan.participants * detail::kChunksPerThread - 1) /
                                                           (plan.participants * detail::kChunksPerThread));
  const std::int64_t nchunks = (n + chunk - 1) / chunk;
  SHOAL_CHECK(!opts.deterministic || nchunks <= detail::kMaxDeterministicBlocks,
              "parallel_reduce: a deterministic reduction keeps one partial per block and would need " +
                  std::to_string(nchunks) + " blocks; pass a grain of at least " +
                  std::to_string((n + detail::kMaxDeterministicBlocks - 1) / detail::kMaxDeterministicBlocks));
  const int helpers = static_cast<int>(std::min<std::int64_t>(plan.participants - 1, nchunks - 1));
  B& b = body;
  C& c = combine;
  if (helpers <= 0 && !opts.deterministic) {
    T acc = identity;
    for (std::int64_t lo = begin; lo < end; lo += chunk)
      acc = c(std::move(acc), detail::reduce_range<T>(b, c, identity, lo, std::min(lo + chunk, end)));
    return acc;
  }
  detail::ReduceState<T, B, C> st{b, c, identity,
                                  std::vector<T>(static_cast<std::size_t>(
                                                     opts.deterministic ? nchunks : helpers + 1),
                                                 identity),
                                  {}, opts.deterministic};
  auto* job = new detail::ForkJoin(begin, end, chunk, helpers, &detail::reduce_participant<T, B, C>,
                                   static_cast<void*>(&st));
  job->execute(*plan.pool, helpers);
  if (opts.deterministic) return detail::tree_combine(st.partials, c);
  T acc = identity;
  const int used = st.used.load(std::memory_order_relaxed);
  for (int i = 0; i < used; ++i) acc = c(std::move(acc), std::move(st.partials[static_cast<std::size_t>(i)]));
  return acc;
}

}  // namespace shoal
