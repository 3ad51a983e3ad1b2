// shoal/frame.hpp — the unit that travels on a TaskRing.
//
// A frame is a fixed 24-byte header followed by `length` payload bytes, the
// whole padded to 8 bytes inside the ring:
//
//   offset  0  u64 task_id   which task (or function id, for kind FunctionDef)
//   offset  8  u32 kind      what the payload is (FrameKind)
//   offset 12  u32 flags     kind-specific bits (FrameFlag)
//   offset 16  u32 length    payload bytes that follow the header
//   offset 20  u32 check     frame_check(task_id, kind, flags, length)
//
// The ring lives in memory a worker can scribble on (it runs arbitrary user
// code), so the reader never trusts a header: decode_frame_header() validates
// the check word, the kind and the length against what the ring holds before
// a single payload byte is read. fuzz/fuzz_frame.cpp hammers exactly that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace shoal {

enum class FrameKind : std::uint32_t {
  FunctionDef = 1,  // driver->worker: pickled callable; task_id = function id
  Call = 2,         // driver->worker: pickled (fn id, args, kwargs) of one task
  Batch = 3,        // driver->worker: pickled (fn id, [(task id, arg)...]), one task per item
  Result = 4,       // worker->driver: pickled return value of task_id
  Failure = 5,      // worker->driver: pickled (exception, traceback text) of task_id
  Control = 6,      // either way: pickled control message (initializer, goodbye, ...)
};
inline constexpr std::uint32_t frame_kind_max = 6;

enum FrameFlag : std::uint32_t {
  // The payload is the name of a SharedSegment holding the real payload (for
  // payloads too large for the ring). The sender keeps/creates the segment.
  frame_flag_indirect = 1u << 0,
  frame_flag_all = frame_flag_indirect,
};

struct FrameHeader {
  std::uint64_t task_id = 0;
  std::uint32_t kind = 0;
  std::uint32_t flags = 0;
  std::uint32_t length = 0;
  std::uint32_t check = 0;
};
static_assert(sizeof(FrameHeader) == 24, "frame header layout is part of the wire format");

inline constexpr std::size_t frame_align = 8;

// Bytes a frame with `length` payload bytes occupies in a ring.
constexpr std::uint64_t frame_footprint(std::uint64_t length) noexcept {
  return (sizeof(FrameHeader) + length + frame_align - 1) & ~std::uint64_t{frame_align - 1};
}

// Not cryptographic: it catches torn or scribbled headers, not adversaries.
constexpr std::uint32_t frame_check(std::uint64_t task_id, std::uint32_t kind, std::uint32_t flags,
                                    std::uint32_t length) noexcept {
  std::uint64_t h = 0x9e3779b97f4a7c15ull ^ task_id;
  h = (h ^ kind) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ flags) * 0x94d049bb133111ebull;
  h = (h ^ length) * 0x9e3779b97f4a7c15ull;
  return static_cast<std::uint32_t>(h >> 32) ^ 0x53484f41u;  // "SHOA"
}

inline FrameHeader make_frame_header(std::uint64_t task_id, FrameKind kind, std::uint32_t flags,
                                     std::uint32_t length) noexcept {
  auto k = static_cast<std::uint32_t>(kind);
  return FrameHeader{task_id, k, flags, length, frame_check(task_id, k, flags, length)};
}

enum class FrameStatus {
  Ok,
  Truncated,    // fewer bytes available than the header announces
  BadCheck,     // the check word does not match: torn or scribbled header
  BadKind,      // unknown kind
  BadFlags,     // unknown flag bits
};

const char* frame_status_text(FrameStatus s) noexcept;

// Validates the header at `bytes` given that `available` bytes of frame data
// (header included, padding excluded) are readable there. On Ok, `out` holds
// the header and the payload is bytes + sizeof(FrameHeader), out.length bytes.
FrameStatus decode_frame_header(const void* bytes, std::size_t available,
                                FrameHeader& out) noexcept;

}  // namespace shoal
