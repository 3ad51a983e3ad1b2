// shoal/check.hpp — the one error choke point of libshoal.
//
// Every failed precondition goes through SHOAL_CHECK (a shoal::Error whose
// message says what broke and where); every failed system call goes through
// shoal::throw_errno (a shoal::SystemError carrying errno). The Python binding
// maps these two types to Python exceptions in one place.
#pragma once

#include <stdexcept>
#include <string>

namespace shoal {

// A broken contract inside libshoal or in its caller's arguments.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failed system call; code() is the errno it failed with.
class SystemError : public Error {
 public:
  SystemError(const std::string& what, int code);
  int code() const noexcept { return code_; }

 private:
  int code_;
};

[[noreturn]] void throw_check_failure(const char* expr, const std::string& msg, const char* file,
                                      int line);
// Throws SystemError("<what>: <strerror(code)>", code).
[[noreturn]] void throw_errno(const std::string& what, int code);
// Same, with the current errno.
[[noreturn]] void throw_errno(const std::string& what);

}  // namespace shoal

// SHOAL_CHECK(cond, msg): msg is any expression convertible to std::string and
// is evaluated only when cond is false.
#define SHOAL_CHECK(cond, msg)                                         \
  do {                                                                 \
    if (!(cond)) [[unlikely]]                                          \
      ::shoal::throw_check_failure(#cond, (msg), __FILE__, __LINE__);  \
  } while (0)
