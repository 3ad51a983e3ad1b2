// libFuzzer target: frame decoding and ring popping on hostile bytes.
//
// A worker runs arbitrary user code and shares the ring memory with the
// driver, so everything the driver reads from a ring may be garbage: the
// header decoder and TaskRing::try_pop must reject it with shoal::Error and
// never read outside the ring.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "shoal/check.hpp"
#include "shoal/frame.hpp"
#include "shoal/task_ring.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // 1. The header decoder alone, on the raw input.
  shoal::FrameHeader h;
  if (shoal::decode_frame_header(data, size, h) == shoal::FrameStatus::Ok) {
    if (sizeof(shoal::FrameHeader) + h.length > size) __builtin_trap();
  }

  // 2. A ring whose control words and contents come from the input.
  if (size < 17) return 0;
  std::uint64_t head, tail;
  std::memcpy(&head, data, 8);
  std::memcpy(&tail, data + 8, 8);
  const std::size_t capacity = std::size_t{256} << (data[16] % 4);  // 256..2048
  std::vector<unsigned char> buf(capacity, 0);
  std::memcpy(buf.data(), data + 17, std::min(size - 17, capacity));
  shoal::RingControl ctl;
  shoal::TaskRing::initialize(&ctl, capacity);
  // Keep positions plausible half the time so that decoding, not the range
  // check, is what gets exercised.
  if (data[16] & 0x80) tail = head + (tail % (capacity + 1));
  ctl.head.store(head);
  ctl.tail.store(tail);
  shoal::TaskRing ring(&ctl, buf.data());
  std::vector<unsigned char> out;
  try {
    for (int i = 0; i < 64; ++i) {
      shoal::FrameHeader fh;
      bool got = ring.try_pop(fh, [&](const shoal::FrameHeader& hh) {
        out.resize(hh.length);
        return out.data();
      });
      if (!got) break;
    }
  } catch (const shoal::Error&) {
  }
  return 0;
}
