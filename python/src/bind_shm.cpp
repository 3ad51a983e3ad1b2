// shoal._core.SharedSegment: conversion only.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include "registry.hpp"
#include "shoal/shm_segment.hpp"

namespace nb = nanobind;
using shoal::SharedSegment;

static void bind(nb::module_& m) {
  nb::class_<SharedSegment>(m, "SharedSegment")
      .def_static("create", &SharedSegment::create, nb::arg("size"))
      .def_static("attach", &SharedSegment::attach, nb::arg("name"))
      .def_prop_ro("name", &SharedSegment::name)
      .def_prop_ro("size", &SharedSegment::size)
      .def_prop_ro("address", [](const SharedSegment& s) {
        return reinterpret_cast<std::uintptr_t>(s.data());
      })
      .def_prop_ro("owns_name", &SharedSegment::owns_name)
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
