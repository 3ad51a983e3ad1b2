// libFuzzer target: decoding a frame batch (one message of the mpi backend)
// from hostile bytes. The message crossed a network from another rank: the
// decoder must refuse anything malformed with shoal::Error and never read
// outside the message; what it accepts re-encodes to the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "shoal/check.hpp"
#include "shoal/frame_batch.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Copied, so that ASan sees a read one past the end of the message.
  std::vector<unsigned char> msg(data, data + size);
  std::vector<shoal::FrameView> frames;
  try {
    frames = shoal::decode_frame_batch(msg.data(), msg.size());
  } catch (const shoal::Error&) {
    return 0;
  }
  shoal::FrameBatchWriter w;
  for (const auto& f : frames) {
    if (f.payload < msg.data() || f.payload + f.header.length > msg.data() + msg.size())
      __builtin_trap();
    w.add(f.header.task_id, static_cast<shoal::FrameKind>(f.header.kind), f.header.flags, f.payload,
          f.header.length);
  }
  std::vector<unsigned char> again = w.take();
  // Padding bytes are not part of the contract: compare frame by frame.
  auto back = shoal::decode_frame_batch(again.data(), again.size());
  if (back.size() != frames.size()) __builtin_trap();
  for (std::size_t i = 0; i < back.size(); ++i) {
    if (std::memcmp(&back[i].header, &frames[i].header, sizeof(shoal::FrameHeader)) != 0 ||
        std::memcmp(back[i].payload, frames[i].payload, frames[i].header.length) != 0)
      __builtin_trap();
  }
  return 0;
}
