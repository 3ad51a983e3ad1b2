// shoal/loop_timer.hpp — each thread's busy time in one native loop (monitor).
//
// parallel_for / parallel_reduce run kernel chunks on the caller and the pool's
// workers; a LoopTimer around each chunk adds the chunk's duration to the
// running thread's slot: 0 for the caller (a thread of no pool), 1 + i for
// worker i of the pool running the loop. Only the monitor creates one: a loop
// without it reads no clock.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

#include "shoal/detail/futex.hpp"
#include "shoal/thread_pool.hpp"

namespace shoal {

class LoopTimer {
 public:
  // slots: 1 + the workers of the pool the loop runs on.
  explicit LoopTimer(int slots)
      : slots_(slots < 1 ? 1 : slots),
        busy_(std::make_unique<std::atomic<std::uint64_t>[]>(static_cast<std::size_t>(slots_))),
        start_(static_cast<std::int64_t>(detail::monotonic_ns())) {}

  // Runs f() on the calling thread and adds its duration to that thread's
  // slot. Each slot has one writer at a time (a thread runs one chunk at a
  // time); relaxed fetch_add, read after the loop joined (the fork-join's
  // completion orders every chunk before the caller's read).
  template <class F>
  decltype(auto) time(F&& f) {
    struct Add {
      LoopTimer& t;
      std::uint64_t t0;
      ~Add() { t.busy_[t.slot()].fetch_add(detail::monotonic_ns() - t0, std::memory_order_relaxed); }
    } add{*this, detail::monotonic_ns()};
    return std::forward<F>(f)();
  }

  int slots() const noexcept { return slots_; }
  std::uint64_t busy(int slot) const noexcept {
    return busy_[static_cast<std::size_t>(slot)].load(std::memory_order_relaxed);
  }
  std::int64_t start_ns() const noexcept { return start_; }

 private:
  int slot() const noexcept {
    const ThreadPool* p = ThreadPool::current();
    const int i = p == nullptr ? 0 : 1 + p->worker_index();
    return i >= 0 && i < slots_ ? i : 0;
  }

  int slots_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> busy_;
  std::int64_t start_;
};

}  // namespace shoal
