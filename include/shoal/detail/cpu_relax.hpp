// shoal/detail/cpu_relax.hpp — the spin-wait hint every spinning loop uses
// (ring readers, the thread pool's idle workers, a loop's joining caller).
#pragma once

#include <thread>

namespace shoal::detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::this_thread::yield();
#endif
}

}  // namespace shoal::detail
