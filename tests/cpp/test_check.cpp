#include <gtest/gtest.h>

#include <cerrno>
#include <string>

#include "shoal/check.hpp"

TEST(Check, PassingCheckDoesNothing) { EXPECT_NO_THROW(SHOAL_CHECK(1 + 1 == 2, "math")); }

TEST(Check, FailingCheckNamesConditionAndMessage) {
  try {
    SHOAL_CHECK(2 < 1, std::string("two is not less than one"));
    FAIL() << "SHOAL_CHECK did not throw";
  } catch (const shoal::Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("two is not less than one"), std::string::npos) << what;
    EXPECT_NE(what.find("2 < 1"), std::string::npos) << what;
  }
}

TEST(Check, ErrnoBecomesSystemError) {
  try {
    shoal::throw_errno("open /nonexistent", ENOENT);
  } catch (const shoal::SystemError& e) {
    EXPECT_EQ(e.code(), ENOENT);
    EXPECT_NE(std::string(e.what()).find("open /nonexistent"), std::string::npos);
  }
}
