// shoal/detail/futex.hpp — the two futex calls the rings need, process-shared
// (no FUTEX_PRIVATE_FLAG: the words live in memory mapped by several processes).
#pragma once

#include <atomic>
#include <cstdint>

#include "shoal/detail/cpu_relax.hpp"

namespace shoal::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == 4 && std::atomic<std::uint32_t>::is_always_lock_free,
              "futex words must be plain lock-free 32-bit atomics");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
              "ring positions must be lock-free 64-bit atomics to work across processes");

// Sleeps while *word == expected, at most timeout_ns (< 0: no limit). Returns
// when woken, on timeout, on a signal, or at once if *word != expected.
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                std::int64_t timeout_ns) noexcept;
// Wakes up to n sleepers on word.
void futex_wake(std::atomic<std::uint32_t>* word, int n) noexcept;

// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the
// machine, so a driver can compare a worker's timestamps with its own.
std::uint64_t monotonic_ns() noexcept;

}  // namespace shoal::detail
