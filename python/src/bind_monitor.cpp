// shoal._core monitor types (Sampler, RingWriter, the file parser): conversion only.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>

#include "registry.hpp"
#include "shoal/detail/futex.hpp"
#include "shoal/monitor_file.hpp"
#include "shoal/sampler.hpp"

namespace nb = nanobind;
using namespace shoal;

static void bind(nb::module_& m) {
  static nb::object file_error =
      nb::exception<MonitorFileError>(m, "MonitorFileError", PyExc_ValueError);

  nb::class_<RingWriter>(m, "MonitorRingWriter")
      .def("record", &RingWriter::record, nb::arg("task"), nb::arg("start_ns"),
           nb::arg("bytes_out"), nb::arg("outcome"),
           "Records a task that began at start_ns and ends now; False if its ring was full.");

  nb::class_<PoolLog>(m, "MonitorPoolLog")
      .def("submit", &PoolLog::submit, nb::arg("task"), nb::arg("fn"), nb::arg("nbytes"))
      .def("submit_range", &PoolLog::submit_range, nb::arg("first"), nb::arg("count"),
           nb::arg("fn"))
      .def("frame", &PoolLog::frame, nb::arg("first"), nb::arg("count"), nb::arg("nbytes"))
      .def("outcome", &PoolLog::outcome, nb::arg("task"), nb::arg("outcome"), nb::arg("attempt"),
           nb::arg("start"), nb::arg("pid"), nb::arg("slot"));

  nb::class_<Sampler>(m, "MonitorSampler")
      .def(
          "__init__",
          [](Sampler* self, const std::string& path, double hz, const std::vector<int>& cpu_ids,
             std::size_t ring_capacity, bool gpu) {
            new (self) Sampler(Sampler::Options{path, hz, cpu_ids, ring_capacity, gpu});
          },
          nb::arg("path"), nb::arg("hz"), nb::arg("cpu_ids"), nb::arg("ring_capacity"),
          nb::arg("gpu") = true)
      .def_prop_ro("gpu_names", &Sampler::gpu_names)
      .def_prop_ro("gpu_note", &Sampler::gpu_note)
      .def_prop_ro("start_ns", &Sampler::start_ns)
      .def_prop_ro("ring_capacity", &Sampler::ring_capacity)
      .def("start", &Sampler::start)
      .def(
          "stop",
          [](Sampler& s, const std::string& end_json) {
            nb::gil_scoped_release nogil;
            s.stop(end_json);
          },
          nb::arg("end_json"))
      .def(
          "tick",
          [](Sampler& s) {
            nb::gil_scoped_release nogil;
            s.tick();
          })
      .def(
          "append_json",
          [](Sampler& s, std::uint32_t type, const std::string& json) {
            return s.append_json(static_cast<ChunkType>(type), json);
          },
          nb::arg("type"), nb::arg("json"))
      .def(
          "append_records",
          [](Sampler& s, std::uint32_t type, nb::bytes data, std::size_t record_size) {
            return s.writer().append(static_cast<ChunkType>(type), data.c_str(), data.size(),
                                     record_size);
          },
          nb::arg("type"), nb::arg("data"), nb::arg("record_size"))
      .def_prop_ro("failed", [](Sampler& s) { return s.writer().failed(); })
      .def_prop_ro("error", [](Sampler& s) { return s.writer().error(); })
      .def_prop_ro("bytes_written", [](Sampler& s) { return s.writer().bytes_written(); })
      .def_prop_ro("dropped", &Sampler::dropped)
      .def_prop_ro("thread_cpu_ns", &Sampler::thread_cpu_ns)
      .def_prop_ro("ticks", &Sampler::ticks)
      .def(
          "native",
          [](Sampler& s, std::uint32_t call, std::int64_t start, std::int64_t end,
             std::uint32_t thread, std::uint64_t busy) {
            s.native(NativeRecord{call, start, end, thread, busy});
          },
          nb::arg("call"), nb::arg("start"), nb::arg("end"), nb::arg("thread"), nb::arg("busy_ns"))
      .def("next_native_call", &Sampler::next_native_call)
      .def(
          "pool_log", [](Sampler& s, std::uint16_t pool) { return PoolLog(s, pool); },
          nb::arg("pool"), nb::keep_alive<0, 1>(), "The ledger's recorder of pool `pool`.")
      .def("add_rings", &Sampler::add_rings, nb::arg("pool"), nb::arg("rings"), nb::arg("shared"))
      .def("thread_writer", &Sampler::thread_writer, nb::arg("pool"), nb::arg("slot"))
      .def(
          "remove_rings",
          [](Sampler& s, std::uint16_t pool) {
            nb::gil_scoped_release nogil;
            s.remove_rings(pool);
          },
          nb::arg("pool"))
      .def("watch", &Sampler::watch, nb::arg("pool"), nb::arg("slot"), nb::arg("pid"),
           nb::arg("tid"))
      .def("unwatch", &Sampler::unwatch, nb::arg("pool"), nb::arg("slot"));

  m.def(
      "parse_monitor_file",
      [](nb::bytes data) {
        ParsedMonitorFile f;
        {
          std::string_view view(data.c_str(), data.size());
          nb::gil_scoped_release nogil;
          f = parse_monitor_file(view);
        }
        nb::list chunks;
        for (auto& c : f.chunks)
          chunks.append(nb::make_tuple(c.type, nb::bytes(c.data.data(), c.data.size())));
        return nb::make_tuple(f.version, chunks, f.truncated);
      },
      nb::arg("data"),
      "(version, [(chunk type, payload bytes)], truncated reason or '') of a monitor file "
      "image; raises MonitorFileError (a ValueError) for a foreign or damaged file.");
}

static shoal::py::Register reg(bind);
