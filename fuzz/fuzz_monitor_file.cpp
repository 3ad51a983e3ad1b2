// libFuzzer target: parsing a monitor file (shoal/monitor_file.hpp) from
// hostile bytes. A file may be cut anywhere, damaged, or not ours at all: the
// parser must answer with MonitorFileError or a result, never read outside
// the image, never allocate more than the chunks can hold; every chunk it
// accepts re-encodes and parses back to the same payload.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <unistd.h>

#include "shoal/monitor_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Copied, so that ASan sees a read one past the end of the image.
  std::string image(reinterpret_cast<const char*>(data), size);
  shoal::ParsedMonitorFile f;
  try {
    f = shoal::parse_monitor_file(image);
  } catch (const shoal::MonitorFileError&) {
    return 0;
  }
  std::size_t total = 0;
  for (const auto& c : f.chunks) {
    total += c.data.size();
    std::string rs = shoal::shuffle_records(c.data, 8);
    if (shoal::unshuffle_records(rs, 8) != c.data) __builtin_trap();
  }
  // Nothing bigger than deflate's best ratio allows.
  if (total > size * 1032 + 64 * (f.chunks.size() + 1)) __builtin_trap();
  // Every payload re-encodes as delta varints and decodes back.
  for (const auto& c : f.chunks) {
    if (c.data.size() % 8 != 0) continue;
    std::string back;
    if (!shoal::delta_decode(shoal::delta_encode(c.data, 8), 8, c.data.size(), back) ||
        back != c.data)
      __builtin_trap();
  }
  return 0;
}
