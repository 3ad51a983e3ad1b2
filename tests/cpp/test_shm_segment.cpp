#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <vector>

#include "shoal/check.hpp"
#include "shoal/shm_segment.hpp"

using shoal::SharedSegment;

static bool exists_in_dev_shm(const std::string& name) {
  return std::filesystem::exists("/dev/shm" + name);
}

TEST(SharedSegment, CreateIsZeroedOwnerOnlyAndUnlinkedOnDestruction) {
  std::string name;
  {
    auto seg = SharedSegment::create(4096);
    name = seg.name();
    ASSERT_EQ(seg.size(), 4096u);
    auto* p = static_cast<unsigned char*>(seg.data());
    for (std::size_t i = 0; i < seg.size(); ++i) ASSERT_EQ(p[i], 0);
    auto perms = std::filesystem::status("/dev/shm" + name).permissions();
    EXPECT_EQ(perms & std::filesystem::perms::all,
              std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    EXPECT_TRUE(exists_in_dev_shm(name));
  }
  EXPECT_FALSE(exists_in_dev_shm(name));
}

TEST(SharedSegment, NamesAreUniqueAndCarryPid) {
  auto a = SharedSegment::create(1);
  auto b = SharedSegment::create(1);
  EXPECT_NE(a.name(), b.name());
  EXPECT_EQ(a.name().rfind("/shoal." + std::to_string(getpid()) + ".", 0), 0u) << a.name();
}

TEST(SharedSegment, AttachSeesWritesAcrossProcesses) {
  auto seg = SharedSegment::create(64);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto child = SharedSegment::attach(seg.name());
    std::memcpy(child.data(), "hello", 6);
    _exit(child.owns_name() ? 1 : 0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_STREQ(static_cast<char*>(seg.data()), "hello");
}

TEST(SharedSegment, AttachMissingOrInvalidNameThrows) {
  EXPECT_THROW(SharedSegment::attach("/shoal.1.doesnotexist"), shoal::SystemError);
  EXPECT_THROW(SharedSegment::attach("no-leading-slash"), shoal::Error);
  EXPECT_THROW(SharedSegment::attach("/a/b"), shoal::Error);
}

TEST(SharedSegment, MoveTransfersOwnership) {
  auto a = SharedSegment::create(8);
  std::string name = a.name();
  SharedSegment b = std::move(a);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_TRUE(exists_in_dev_shm(name));
  b = SharedSegment::create(8);
  EXPECT_FALSE(exists_in_dev_shm(name));
}

TEST(SharedSegment, SweepRemovesSegmentsOfDeadCreatorsOnly) {
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto seg = SharedSegment::create(16);
    seg.release_name();  // simulate a creator that died without cleaning up
    (void)!write(pipefd[1], seg.name().c_str(), seg.name().size() + 1);
    _exit(0);
  }
  char buf[128] = {};
  ASSERT_GT(read(pipefd[0], buf, sizeof buf), 0);
  waitpid(pid, nullptr, 0);
  close(pipefd[0]);
  close(pipefd[1]);
  std::string orphan = buf;
  auto mine = SharedSegment::create(16);
  ASSERT_TRUE(exists_in_dev_shm(orphan));
  EXPECT_GE(shoal::sweep_orphan_segments(), 1);
  EXPECT_FALSE(exists_in_dev_shm(orphan));
  EXPECT_TRUE(exists_in_dev_shm(mine.name()));
}

// A forked copy of the owner (a child of the driver that exits normally)
// destroys its copy of the segment object without unlinking the name.
TEST(SharedSegment, AForkedCopyDoesNotUnlinkTheParentsName) {
  auto seg = SharedSegment::create(64);
  const std::string name = seg.name();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    { SharedSegment copy = std::move(seg); }  // destroyed here, in the child
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(exists_in_dev_shm(name)) << "the child unlinked its parent's segment";
  seg = SharedSegment::create(1);  // in the owner, letting go still unlinks
  EXPECT_FALSE(exists_in_dev_shm(name));
}

TEST(SharedSegment, WriteGoesThroughTheFileAndIsSeenByEveryMapping) {
  auto seg = SharedSegment::create(3 * 4096 + 100);
  auto other = SharedSegment::attach(seg.name());
  std::vector<unsigned char> src(2 * 4096 + 50);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 7 + 1);
  seg.write(4000, src.data(), src.size());  // straddles pages
  const auto* mine = static_cast<const unsigned char*>(seg.data());
  const auto* theirs = static_cast<const unsigned char*>(other.data());
  EXPECT_EQ(std::memcmp(mine + 4000, src.data(), src.size()), 0);
  EXPECT_EQ(std::memcmp(theirs + 4000, src.data(), src.size()), 0);
  EXPECT_EQ(mine[3999], 0);
  EXPECT_EQ(mine[4000 + src.size()], 0);
  // The last byte fits; one more does not, nor an offset past the end.
  seg.write(seg.size() - 1, src.data(), 1);
  EXPECT_EQ(mine[seg.size() - 1], src[0]);
  EXPECT_THROW(seg.write(seg.size() - 1, src.data(), 2), shoal::Error);
  EXPECT_THROW(seg.write(seg.size() + 1, src.data(), 0), shoal::Error);
  // With the name gone, through the mapping instead.
  seg.unlink();
  seg.write(0, src.data(), 10);
  EXPECT_EQ(std::memcmp(theirs, src.data(), 10), 0);
}

TEST(SharedSegment, CreateReservesOnlyWhatItIsAskedTo) {
  struct stat st {};
  auto all = SharedSegment::create(64 * 4096);
  ASSERT_EQ(stat(("/dev/shm" + all.name()).c_str(), &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), 64u * 4096);
  EXPECT_GE(static_cast<std::size_t>(st.st_blocks) * 512, 64u * 4096);  // memory given now
  auto head = SharedSegment::create(64 * 4096, 4096);
  ASSERT_EQ(stat(("/dev/shm" + head.name()).c_str(), &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), 64u * 4096);  // the full size all the same
  EXPECT_LT(static_cast<std::size_t>(st.st_blocks) * 512, 64u * 4096);
  std::vector<unsigned char> src(60 * 4096, 3);
  head.write(4096, src.data(), src.size());  // write gives the rest its memory
  ASSERT_EQ(stat(("/dev/shm" + head.name()).c_str(), &st), 0);
  EXPECT_GE(static_cast<std::size_t>(st.st_blocks) * 512, 61u * 4096);
  EXPECT_EQ(static_cast<const unsigned char*>(head.data())[4096 + 5], 3);
  auto none = SharedSegment::create(4096, 0);
  EXPECT_EQ(static_cast<const unsigned char*>(none.data())[100], 0);  // a hole reads as zero
}
