// shoal._core: frame batches (shoal/frame_batch.hpp), the messages of the mpi
// backend. Conversion only.
#include <nanobind/nanobind.h>

#include <cstdint>
#include <string>
#include <vector>

#include "registry.hpp"
#include "shoal/check.hpp"
#include "shoal/frame_batch.hpp"

namespace nb = nanobind;

namespace {

void bind(nb::module_& m) {
  m.def(
      "pack_frames",
      [](nb::list frames) {
        shoal::FrameBatchWriter w;
        for (nb::handle item : frames) {
          nb::tuple t = nb::cast<nb::tuple>(item);
          SHOAL_CHECK(nb::len(t) == 4, "a frame is (task_id, kind, flags, bytes)");
          const auto kind = nb::cast<std::uint32_t>(t[1]);
          SHOAL_CHECK(kind >= 1 && kind <= shoal::frame_kind_max,
                      "unknown frame kind " + std::to_string(kind));
          nb::bytes data = nb::cast<nb::bytes>(t[3]);
          w.add(nb::cast<std::uint64_t>(t[0]), static_cast<shoal::FrameKind>(kind),
                nb::cast<std::uint32_t>(t[2]), data.c_str(), data.size());
        }
        std::vector<unsigned char> out = w.take();
        return nb::bytes(reinterpret_cast<const char*>(out.data()), out.size());
      },
      nb::arg("frames"),
      "One message of frames: [(task_id, kind, flags, bytes), ...] -> bytes "
      "(shoal/frame_batch.hpp).");
  m.def(
      "unpack_frames",
      [](nb::bytes data) {
        auto views = shoal::decode_frame_batch(data.c_str(), data.size());
        nb::list out;
        for (const auto& v : views)
          out.append(nb::make_tuple(v.header.task_id, v.header.kind, v.header.flags,
                                    nb::bytes(reinterpret_cast<const char*>(v.payload),
                                              v.header.length)));
        return out;
      },
      nb::arg("data"),
      "The frames of a message made by pack_frames, as (task_id, kind, flags, bytes); "
      "shoal._core.Error on anything malformed.");
}

shoal::py::Register reg(bind);

}  // namespace
