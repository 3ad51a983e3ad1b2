// shoal/shm_segment.hpp — a named POSIX shared-memory segment.
//
// Names are "/shoal.<creator pid>.<128 random bits, hex>": unguessable, owner-only
// (mode 0600), and they carry the creator's pid so that sweep_orphan_segments()
// can remove what a crashed (SIGKILLed) creator left behind in /dev/shm.
//
// Lifetime: the creating object unlinks the name when destroyed unless
// release_name() handed that duty elsewhere; mappings stay valid after unlink
// until every process has unmapped (the kernel frees the memory then).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>

namespace shoal {

class SharedSegment {
 public:
  // A new zero-filled segment of `size` bytes (size 0 is rounded up to 1).
  // The first `reserve` bytes (all by default) get their memory now, so that
  // a full /dev/shm fails here with ENOSPC instead of a SIGBUS on first
  // touch. A creator that fills the rest with write() reserves less: write
  // allocates what it writes (and reports ENOSPC), and the kernel does not
  // zero pages that are overwritten at once.
  static SharedSegment create(std::size_t size, std::size_t reserve = static_cast<std::size_t>(-1));
  // Maps an existing segment by name, read-write. Throws SystemError if absent.
  static SharedSegment attach(const std::string& name);

  SharedSegment(SharedSegment&& other) noexcept;
  SharedSegment& operator=(SharedSegment&& other) noexcept;
  SharedSegment(const SharedSegment&) = delete;
  SharedSegment& operator=(const SharedSegment&) = delete;
  ~SharedSegment();

  void* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  const std::string& name() const noexcept { return name_; }
  bool owns_name() const noexcept { return owns_name_; }

  // Copies n bytes from src to `offset` in the segment through its file
  // (pwrite), not through the mapping: the kernel fills the pages without a
  // page fault per 4 KiB page in this process, which for a fresh segment is
  // about twice as fast (measured: 512 MiB in 0.3 s instead of 0.6-0.7 s).
  // If the name is gone (unlinked), copies through the mapping instead.
  // Throws shoal::Error on a range outside the segment, SystemError on a
  // failed write.
  void write(std::size_t offset, const void* src, std::size_t n) const;

  // Removes the name now (idempotent); existing mappings remain valid.
  void unlink() noexcept;
  // This object will no longer unlink the name on destruction.
  void release_name() noexcept { owns_name_ = false; }
  // Takes over the duty to unlink (for a receiver that attached).
  void adopt_name() noexcept;

 private:
  SharedSegment(std::string name, void* data, std::size_t size, bool owns);
  void close() noexcept;

  std::string name_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
  bool owns_name_ = false;
  // The process that took the duty to unlink. A forked copy of this object
  // (a child of the driver that exits normally) must not unlink its parent's
  // segments when it is destroyed.
  pid_t owner_pid_ = 0;
};

// The prefix of every shoal segment name (without the leading '/').
inline constexpr const char* segment_prefix = "shoal.";

// Removes segments under `dir` (normally /dev/shm) whose creator pid no longer
// exists. Returns how many were removed. Never throws.
int sweep_orphan_segments(const std::string& dir = "/dev/shm") noexcept;

}  // namespace shoal
