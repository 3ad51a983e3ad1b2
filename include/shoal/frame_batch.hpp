// shoal/frame_batch.hpp — many frames in one flat message.
//
// What one MPI message between the root and a node leader carries: the
// frames of a ring (shoal/frame.hpp), one after another, behind a small
// header, so that a batch of tasks or results costs one message.
//
//   offset 0   u64 magic        "SHOALFB1"
//   offset 8   u32 count        frames that follow
//   offset 12  u32 reserved     0
//   offset 16  count x (FrameHeader, payload, padding to 8 bytes)
//
// The bytes come from another process (another node, even), so the decoder
// trusts nothing: every header is validated (check word, kind, flags) and
// every length against the bytes that remain before a payload is handed
// out; anything else throws shoal::Error saying what is wrong and where.
// fuzz/fuzz_frame_batch.cpp hammers exactly that.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "shoal/frame.hpp"

namespace shoal {

inline constexpr std::uint64_t frame_batch_magic = 0x3142464c414f4853ull;  // "SHOALFB1"
inline constexpr std::size_t frame_batch_header_bytes = 16;

// A frame inside a decoded batch: its header and where its payload lies
// (inside the batch's buffer, which must outlive it).
struct FrameView {
  FrameHeader header;
  const unsigned char* payload = nullptr;
};

// Appends frames to one growing buffer.
class FrameBatchWriter {
 public:
  FrameBatchWriter();
  void add(std::uint64_t task_id, FrameKind kind, std::uint32_t flags, const void* payload,
           std::size_t length);
  std::uint32_t count() const noexcept { return count_; }
  std::size_t size() const noexcept { return bytes_.size(); }
  // The finished message (the writer is empty afterwards).
  std::vector<unsigned char> take();

 private:
  std::vector<unsigned char> bytes_;
  std::uint32_t count_ = 0;
};

// The frames of a message of `size` bytes. Throws shoal::Error on anything
// malformed: a short or foreign header, a frame whose header does not
// validate, a length past the end, a count that does not match, bytes left
// over.
std::vector<FrameView> decode_frame_batch(const void* data, std::size_t size);

}  // namespace shoal
