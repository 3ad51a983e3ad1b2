// shoal._core.PoolChannel / WorkerSupervisor: conversion only. Every call that
// may wait releases the GIL; frames are copied straight into Python bytes.
#include <nanobind/nanobind.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <optional>

#include "registry.hpp"
#include "shoal/loaded_libraries.hpp"
#include "shoal/pool_channel.hpp"
#include "shoal/worker_supervisor.hpp"

namespace nb = nanobind;
using shoal::FrameHeader;
using shoal::FrameKind;
using shoal::PoolChannel;
using shoal::TaskRing;
using shoal::WorkerSupervisor;

namespace {

std::int64_t to_ns(std::optional<double> seconds) {
  if (!seconds) return -1;
  double s = *seconds;
  if (!(s > 0)) return 0;
  if (s > 1e9) return -1;
  return static_cast<std::int64_t>(std::llround(s * 1e9));
}

// Pops every frame of `ring` into (task_id, kind, flags, bytes) tuples
// appended to `out`.
void drain_into(TaskRing ring, nb::list& out) {
  FrameHeader h;
  PyObject* payload = nullptr;
  while (true) {
    bool got = ring.try_pop(h, [&](const FrameHeader& hh) -> unsigned char* {
      payload = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(hh.length));
      if (payload == nullptr) throw nb::python_error();
      return reinterpret_cast<unsigned char*>(PyBytes_AS_STRING(payload));
    });
    if (!got) break;
    nb::object data = nb::steal(payload);
    payload = nullptr;
    out.append(nb::make_tuple(h.task_id, h.kind, h.flags, data));
  }
}

FrameKind to_kind(std::uint32_t k) {
  SHOAL_CHECK(k >= 1 && k <= shoal::frame_kind_max, "invalid frame kind " + std::to_string(k));
  return static_cast<FrameKind>(k);
}

}  // namespace

static void bind(nb::module_& m) {
  m.def("loaded_libraries", &shoal::loaded_libraries,
        "Paths of the shared libraries loaded in this process (dl_iterate_phdr).");
  nb::class_<PoolChannel>(m, "PoolChannel")
      .def_static("create", &PoolChannel::create, nb::arg("slots"), nb::arg("ring_bytes"))
      .def_static("attach_fd", &PoolChannel::attach_fd, nb::arg("fd"))
      .def_prop_ro("fd", &PoolChannel::fd)
      .def_prop_ro("slots", &PoolChannel::slots)
      .def_prop_ro("ring_bytes", &PoolChannel::ring_bytes)
      .def_prop_ro("max_payload",
                   [](const PoolChannel& c) { return c.task_ring(0).max_payload(); })
      // ---- driver ----
      .def(
          "push_tasks",
          [](PoolChannel& c, std::size_t slot, nb::list frames, std::size_t start) {
            TaskRing ring = c.task_ring(slot);
            std::size_t i = start, n = nb::len(frames);
            for (; i < n; ++i) {
              nb::tuple t = nb::cast<nb::tuple>(frames[i]);
              nb::bytes data = nb::cast<nb::bytes>(t[3]);
              if (!ring.try_push(nb::cast<std::uint64_t>(t[0]), to_kind(nb::cast<std::uint32_t>(t[1])),
                                 nb::cast<std::uint32_t>(t[2]), data.c_str(), data.size()))
                break;
            }
            if (i > start) ring.notify_consumer();
            return i;
          },
          nb::arg("slot"), nb::arg("frames"), nb::arg("start") = 0,
          "Pushes frames[start:] ((task_id, kind, flags, bytes) tuples) onto slot's task ring "
          "until one does not fit; wakes the worker once. Returns the index of the first frame "
          "not pushed.")
      .def(
          "push_task",
          [](PoolChannel& c, std::size_t slot, std::uint64_t task_id, std::uint32_t kind,
             std::uint32_t flags, nb::bytes data) {
            TaskRing ring = c.task_ring(slot);
            if (!ring.try_push(task_id, to_kind(kind), flags, data.c_str(), data.size()))
              return false;
            ring.notify_consumer();
            return true;
          },
          nb::arg("slot"), nb::arg("task_id"), nb::arg("kind"), nb::arg("flags"), nb::arg("data"),
          "Pushes one frame if it fits now and wakes the worker if it sleeps.")
      .def(
          "drain_by_slot",
          [](PoolChannel& c) {
            nb::list out;
            for (std::size_t i = 0; i < c.slots(); ++i) {
              nb::list frames;
              drain_into(c.result_ring(i), frames);
              if (nb::len(frames) != 0) out.append(nb::make_tuple(i, frames));
            }
            return out;
          },
          "Every waiting result frame, grouped by slot: [(slot, [(task_id, kind, flags, "
          "bytes), ...])] for the slots that have any.")
      .def(
          "drain_slot",
          [](PoolChannel& c, std::size_t slot) {
            nb::list out;
            drain_into(c.result_ring(slot), out);
            return out;
          },
          nb::arg("slot"),
          "Every waiting result frame of one slot as (task_id, kind, flags, bytes).")
      .def("pick_slot", &PoolChannel::pick_slot, nb::arg("max_queued"), nb::arg("max_task_ns"),
           "The first awake worker of short tasks with a short queue (>= 0), else -1 - i for "
           "the least loaded slot i (PoolChannel::pick_slot).")
      .def(
          "task_ns", [](PoolChannel& c, std::size_t slot) {
            return c.slot(slot).task_ns.load(std::memory_order_relaxed);
          },
          nb::arg("slot"), "Slot's average task time in ns (0: not known yet).")
      .def(
          "queued",
          [](PoolChannel& c, std::size_t slot) { return c.task_ring(slot).queued(); },
          nb::arg("slot"), "Frames on slot's task ring that its worker has not taken yet.")
      .def("doorbell", &PoolChannel::doorbell)
      .def("ring_doorbell", &PoolChannel::ring_doorbell)
      .def("any_result", &PoolChannel::any_result)
      .def(
          "wait_driver",
          [](PoolChannel& c, std::uint32_t seen, std::optional<double> timeout, double spin_us) {
            nb::gil_scoped_release nogil;
            return c.wait_driver(seen, to_ns(timeout), static_cast<std::int64_t>(spin_us * 1e3));
          },
          nb::arg("seen"), nb::arg("timeout").none(), nb::arg("spin_us") = 50.0)
      .def("shutdown", &PoolChannel::shutdown)
      .def_prop_ro("is_shutdown", &PoolChannel::is_shutdown)
      .def("reset_slot", &PoolChannel::reset_slot, nb::arg("slot"))
      .def(
          "set_pid",
          [](PoolChannel& c, std::size_t slot, int pid) {
            c.slot(slot).pid.store(pid, std::memory_order_relaxed);
          },
          nb::arg("slot"), nb::arg("pid"))
      .def(
          "slot_state",
          [](PoolChannel& c, std::size_t slot) {
            auto& s = c.slot(slot);
            std::uint64_t task = s.current_task.load(std::memory_order_acquire);
            std::uint64_t started = s.started_ns.load(std::memory_order_relaxed);
            return nb::make_tuple(task, started);
          },
          nb::arg("slot"), "(current task id or 0, its monotonic start time in ns)")
      // ---- worker ----
      .def(
          "next_tasks",
          [](PoolChannel& c, std::size_t slot, std::optional<double> timeout, double spin_us) {
            TaskRing ring = c.task_ring(slot);
            {
              nb::gil_scoped_release nogil;
              ring.wait_readable(to_ns(timeout), static_cast<std::int64_t>(spin_us * 1e3),
                                 c.shutdown_flag());
            }
            nb::list out;
            drain_into(ring, out);
            return out;
          },
          nb::arg("slot"), nb::arg("timeout").none(), nb::arg("spin_us") = 50.0,
          "Waits for frames (spin, then futex), returns all of them as (task_id, kind, flags, "
          "bytes); [] on timeout or shutdown.")
      .def(
          "push_result",
          [](PoolChannel& c, std::size_t slot, std::uint64_t task_id, std::uint32_t kind,
             std::uint32_t flags, nb::bytes data) {
            TaskRing ring = c.result_ring(slot);
            FrameKind k = to_kind(kind);
            SHOAL_CHECK(data.size() <= ring.max_payload(),
                        "result frame too large for the ring; send it indirectly");
            while (!ring.try_push(task_id, k, flags, data.c_str(), data.size())) {
              if (c.is_shutdown()) return false;
              // The driver drains continuously; wait for it without the GIL.
              c.notify_driver();
              nb::gil_scoped_release nogil;
              ring.wait_writable(data.size(), 100'000'000, 20'000);
            }
            c.notify_driver();
            c.note_result(slot, task_id, kind, data.size());
            return true;
          },
          nb::arg("slot"), nb::arg("task_id"), nb::arg("kind"), nb::arg("flags"), nb::arg("data"),
          "Pushes one result frame, waiting (GIL released) while the ring is full; wakes the "
          "driver if it sleeps. False if the pool shut down meanwhile.")
      .def("set_current", &PoolChannel::set_current, nb::arg("slot"), nb::arg("task_id"))
      .def("attach_monitor", &PoolChannel::attach_monitor, nb::arg("segment"), nb::arg("pool"),
           nb::arg("slot"))
      .def("next_result_bytes", &PoolChannel::next_result_bytes, nb::arg("bytes"));

  nb::class_<WorkerSupervisor>(m, "WorkerSupervisor")
      .def(
          "__init__",
          [](WorkerSupervisor* self, PoolChannel& channel) {
            PoolChannel* ch = &channel;
            new (self) WorkerSupervisor([ch] { ch->ring_doorbell(); });
          },
          nb::arg("channel"), nb::keep_alive<1, 2>(),
          "Rings channel's doorbell whenever a worker dies.")
      .def(
          "spawn",
          [](WorkerSupervisor& s, int slot, const std::vector<std::string>& argv,
             const std::vector<std::string>& env, int fd) {
            nb::gil_scoped_release nogil;
            return s.spawn(slot, argv, env, fd);
          },
          nb::arg("slot"), nb::arg("argv"), nb::arg("env"), nb::arg("fd"))
      .def("adopt", &WorkerSupervisor::adopt, nb::arg("slot"), nb::arg("pid"))
      .def("signal", &WorkerSupervisor::signal, nb::arg("pid"), nb::arg("sig"))
      .def("take_exits",
           [](WorkerSupervisor& s) {
             nb::list out;
             for (const auto& e : s.take_exits())
               out.append(nb::make_tuple(e.slot, e.pid, e.exit_code, e.signal));
             return out;
           },
           "Deaths since the last call: [(slot, pid, exit_code, signal)]; signal 0 = exited.")
      .def_prop_ro("alive", &WorkerSupervisor::alive)
      .def_prop_ro("uses_pidfd", &WorkerSupervisor::uses_pidfd)
      .def(
          "stop",
          [](WorkerSupervisor& s, double grace) {
            nb::gil_scoped_release nogil;
            s.stop(grace);
          },
          nb::arg("grace") = 0.0);

  m.def("guard_worker", &shoal::guard_worker, nb::arg("driver_pid"), nb::arg("parent_pid") = 0);
  m.def("sweep_segments_of", &shoal::sweep_segments_of, nb::arg("pid"));
  m.def("monotonic_ns", &shoal::detail::monotonic_ns);
}

static shoal::py::Register reg(bind);
