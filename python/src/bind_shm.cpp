// shoal._core.SharedSegment: conversion only.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>

#include "registry.hpp"
#include "shoal/shm_segment.hpp"

namespace nb = nanobind;
using shoal::SharedSegment;

static void bind(nb::module_& m) {
  nb::class_<SharedSegment>(m, "SharedSegment")
      .def_static(
          "create",
          [](std::size_t size, std::optional<std::size_t> reserve) {
            return SharedSegment::create(size, reserve ? *reserve : static_cast<std::size_t>(-1));
          },
          nb::arg("size"), nb::arg("reserve").none() = nb::none(),
          "A new zero-filled segment; only its first `reserve` bytes (default: all) get their "
          "memory now (the rest: by write()).")
      .def_static("attach", &SharedSegment::attach, nb::arg("name"))
      .def_prop_ro("name", &SharedSegment::name)
      .def_prop_ro("size", &SharedSegment::size)
      .def_prop_ro("address", [](const SharedSegment& s) {
        return reinterpret_cast<std::uintptr_t>(s.data());
      })
      .def_prop_ro("owns_name", &SharedSegment::owns_name)
      .def(
          "write",
          [](const SharedSegment& s, std::size_t offset, nb::handle data) {
            Py_buffer view;
            if (PyObject_GetBuffer(data.ptr(), &view, PyBUF_C_CONTIGUOUS) != 0)
              throw nb::python_error();
            try {
              nb::gil_scoped_release nogil;
              s.write(offset, view.buf, static_cast<std::size_t>(view.len));
            } catch (...) {
              PyBuffer_Release(&view);
              throw;
            }
            PyBuffer_Release(&view);
          },
          nb::arg("offset"), nb::arg("data"),
          "Copies a C-contiguous buffer to offset through the segment's file (pwrite): no page "
          "fault per page in this process, twice as fast into fresh pages.")
      .def("unlink", &SharedSegment::unlink)
      .def("release_name", &SharedSegment::release_name)
      .def("adopt_name", &SharedSegment::adopt_name)
      // A writable uint8 numpy view of the whole segment; the view keeps the
      // segment (and so the mapping) alive.
      .def(
          "view",
          [](nb::handle self) {
            auto& s = nb::cast<SharedSegment&>(self);
            std::size_t shape[1] = {s.size()};
            return nb::ndarray<nb::numpy, std::uint8_t, nb::ndim<1>>(
                static_cast<std::uint8_t*>(s.data()), 1, shape, self);
          },
          nb::rv_policy::reference_internal);
  m.def("sweep_orphan_segments", &shoal::sweep_orphan_segments, nb::arg("dir") = "/dev/shm");
}

static shoal::py::Register reg(bind);
