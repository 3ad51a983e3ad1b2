#include "shoal/frame.hpp"

namespace shoal {

const char* frame_status_text(FrameStatus s) noexcept {
  switch (s) {
    case FrameStatus::Ok: return "ok";
    case FrameStatus::Truncated: return "frame longer than the data the ring holds";
    case FrameStatus::BadCheck: return "frame header check word mismatch (corrupted ring)";
    case FrameStatus::BadKind: return "unknown frame kind";
    case FrameStatus::BadFlags: return "unknown frame flags";
  }
  return "unknown frame status";
}

FrameStatus decode_frame_header(const void* bytes, std::size_t available,
                                FrameHeader& out) noexcept {
  if (available < sizeof(FrameHeader)) return FrameStatus::Truncated;
  FrameHeader h;
  std::memcpy(&h, bytes, sizeof h);  // the ring gives no alignment promise to readers
  if (h.check != frame_check(h.task_id, h.kind, h.flags, h.length)) return FrameStatus::BadCheck;
  if (h.kind == 0 || h.kind > frame_kind_max) return FrameStatus::BadKind;
  if ((h.flags & ~std::uint32_t{frame_flag_all}) != 0) return FrameStatus::BadFlags;
  if (h.length > available - sizeof(FrameHeader)) return FrameStatus::Truncated;
  out = h;
  return FrameStatus::Ok;
}

}  // namespace shoal
