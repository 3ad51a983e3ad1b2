// The shared libraries mapped into this process, from the dynamic linker's
// own list (dl_iterate_phdr): microseconds, where reading /proc/self/maps
// costs a millisecond in a process that has imported numpy.
#pragma once

#include <string>
#include <vector>

namespace shoal {

/// Paths of the loaded shared objects, in load order; the main program and
/// the vDSO (which have no path) are left out.
std::vector<std::string> loaded_libraries();

}  // namespace shoal
