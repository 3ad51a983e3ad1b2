#include "shoal/frame_batch.hpp"

#include <cstring>
#include <limits>
#include <string>

#include "shoal/check.hpp"

// GCC 12 at -O3 reports the vector's own reallocation of its first 16 bytes
// as out of bounds (a known false positive of -Warray-bounds on
// std::vector<unsigned char> growth, GCC bug 107852); clang and ASan see
// nothing. Silenced for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Warray-bounds"
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#endif

namespace shoal {

FrameBatchWriter::FrameBatchWriter() { bytes_.resize(frame_batch_header_bytes, 0); }

void FrameBatchWriter::add(std::uint64_t task_id, FrameKind kind, std::uint32_t flags,
                           const void* payload, std::size_t length) {
  SHOAL_CHECK(length <= std::numeric_limits<std::uint32_t>::max(),
              "frame payload of " + std::to_string(length) + " bytes is over 4 GiB");
  SHOAL_CHECK((flags & ~frame_flag_all) == 0, "unknown frame flags " + std::to_string(flags));
  SHOAL_CHECK(count_ < std::numeric_limits<std::uint32_t>::max(), "too many frames in one batch");
  const FrameHeader h = make_frame_header(task_id, kind, flags, static_cast<std::uint32_t>(length));
  const std::size_t at = bytes_.size();
  bytes_.resize(at + frame_footprint(length), 0);
  std::memcpy(bytes_.data() + at, &h, sizeof h);
  if (length != 0) std::memcpy(bytes_.data() + at + sizeof h, payload, length);
  ++count_;
}

std::vector<unsigned char> FrameBatchWriter::take() {
  std::memcpy(bytes_.data(), &frame_batch_magic, 8);
  std::memcpy(bytes_.data() + 8, &count_, 4);
  std::vector<unsigned char> out;
  out.swap(bytes_);
  bytes_.resize(frame_batch_header_bytes, 0);
  count_ = 0;
  return out;
}

std::vector<FrameView> decode_frame_batch(const void* data, std::size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  SHOAL_CHECK(size >= frame_batch_header_bytes,
              "frame batch of " + std::to_string(size) + " bytes is shorter than its header");
  std::uint64_t magic = 0;
  std::uint32_t count = 0, reserved = 0;
  std::memcpy(&magic, p, 8);
  std::memcpy(&count, p + 8, 4);
  std::memcpy(&reserved, p + 12, 4);
  SHOAL_CHECK(magic == frame_batch_magic, "not a shoal frame batch (bad magic)");
  SHOAL_CHECK(reserved == 0, "frame batch header: reserved word is not 0");
  // Every frame takes at least a header: a count beyond that is a lie, and
  // must not size the vector below.
  const std::size_t room = size - frame_batch_header_bytes;
  SHOAL_CHECK(count <= room / sizeof(FrameHeader),
              "frame batch claims " + std::to_string(count) + " frames in " +
                  std::to_string(room) + " bytes");
  std::vector<FrameView> out;
  out.reserve(count);
  std::size_t at = frame_batch_header_bytes;
  for (std::uint32_t i = 0; i < count; ++i) {
    FrameView v;
    const FrameStatus s = decode_frame_header(p + at, size - at, v.header);
    SHOAL_CHECK(s == FrameStatus::Ok, "frame " + std::to_string(i) + " at byte " +
                                          std::to_string(at) + ": " + frame_status_text(s));
    const std::uint64_t step = frame_footprint(v.header.length);
    SHOAL_CHECK(step <= size - at, "frame " + std::to_string(i) + " at byte " +
                                       std::to_string(at) + ": its padding runs past the end");
    v.payload = p + at + sizeof(FrameHeader);
    out.push_back(v);
    at += static_cast<std::size_t>(step);
  }
  SHOAL_CHECK(at == size, "frame batch: " + std::to_string(size - at) +
                              " bytes after its last frame");
  return out;
}

}  // namespace shoal
