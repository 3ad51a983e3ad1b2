#include <gtest/gtest.h>

#include <dlfcn.h>

#include <algorithm>
#include <string>

#include "shoal/loaded_libraries.hpp"

namespace {

bool has(const std::vector<std::string>& libs, const std::string& part) {
  return std::any_of(libs.begin(), libs.end(),
                     [&](const std::string& p) { return p.find(part) != std::string::npos; });
}

}  // namespace

TEST(LoadedLibraries, ListsLibcAndALibraryLoadedLater) {
  const auto before = shoal::loaded_libraries();
  EXPECT_TRUE(has(before, "libc.so")) << before.size();
  for (const auto& p : before) EXPECT_FALSE(p.empty());
  void* h = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) GTEST_SKIP() << "libz.so.1 not installed";
  const auto after = shoal::loaded_libraries();
  EXPECT_TRUE(has(after, "libz.so")) << "dlopen'ed library missing";
  dlclose(h);
}
