// shoal._core: the nanobind module. Conversion only.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "registry.hpp"
#include "shoal/shoal.hpp"

namespace nb = nanobind;

NB_MODULE(_core, m) {
  m.attr("version") = shoal::version;
  // The one place C++ errors become Python exceptions. SystemError -> OSError
  // with errno; shoal::Error -> shoal._core.Error (a RuntimeError).
  static nb::object error_type = nb::exception<shoal::Error>(m, "Error", PyExc_RuntimeError);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const shoal::SystemError& e) {
      nb::object exc = nb::handle(PyExc_OSError)(e.code(), e.what());
      PyErr_SetObject(PyExc_OSError, exc.ptr());
    }
  });
  // A child forked from a driver abandons the parent's pool objects on
  // purpose (shoal._backend_processes._disown_in_child): they are still alive
  // when the child's interpreter ends, which nanobind would report as leaks.
  m.def("set_leak_warnings", [](bool on) { nb::set_leak_warnings(on); }, nb::arg("on"));
  for (auto bind : shoal::py::binders()) bind(m);
}
