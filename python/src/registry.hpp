// Each bind_*.cpp registers itself here, so adding a binding file never edits
// another one. The extension only converts types: logic lives in libshoal or
// in the plain Python modules of the shoal package.
#pragma once
#include <nanobind/nanobind.h>

#include <functional>
#include <vector>

namespace shoal::py {

using Binder = void (*)(nanobind::module_&);

inline std::vector<Binder>& binders() {
  static std::vector<Binder> all;
  return all;
}

struct Register {
  explicit Register(Binder b) { binders().push_back(b); }
};

}  // namespace shoal::py
