#include "shoal/check.hpp"

#include <cerrno>
#include <cstring>

namespace shoal {

SystemError::SystemError(const std::string& what, int code) : Error(what), code_(code) {}

void throw_check_failure(const char* expr, const std::string& msg, const char* file, int line) {
  throw Error(msg + " [check `" + expr + "` failed at " + file + ":" + std::to_string(line) + "]");
}

void throw_errno(const std::string& what, int code) {
  throw SystemError(what + ": " + std::strerror(code), code);
}

void throw_errno(const std::string& what) { throw_errno(what, errno); }

}  // namespace shoal
