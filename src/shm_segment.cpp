#include "shoal/shm_segment.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "shoal/check.hpp"

namespace shoal {

namespace {

std::string random_hex(std::size_t bytes) {
  unsigned char buf[32];
  SHOAL_CHECK(bytes <= sizeof buf, "random_hex: too many bytes requested");
  std::size_t got = 0;
  while (got < bytes) {
    ssize_t r = getrandom(buf + got, bytes - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_errno("getrandom");
    }
    got += static_cast<std::size_t>(r);
  }
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < bytes; ++i) {
    out += digits[buf[i] >> 4];
    out += digits[buf[i] & 15];
  }
  return out;
}

void* map_fd(int fd, std::size_t size, const std::string& name) {
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    ::close(fd);
    throw_errno("mmap shared segment " + name, e);
  }
  ::close(fd);
  return p;
}

}  // namespace

SharedSegment::SharedSegment(std::string name, void* data, std::size_t size, bool owns)
    : name_(std::move(name)), data_(data), size_(size), owns_name_(owns),
      owner_pid_(owns ? getpid() : 0) {}

void SharedSegment::adopt_name() noexcept {
  owns_name_ = true;
  owner_pid_ = getpid();
}

SharedSegment SharedSegment::create(std::size_t size, std::size_t reserve) {
  if (size == 0) size = 1;
  if (reserve > size) reserve = size;
  for (int attempt = 0;; ++attempt) {
    // Built with append: GCC 12 at -O3 reports a false -Wrestrict on chained operator+.
    std::string name = "/";
    name.append(segment_prefix).append(std::to_string(getpid())).append(".").append(random_hex(16));
    int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
      if (errno == EEXIST && attempt < 8) continue;
      throw_errno("shm_open(create) " + name);
    }
    // posix_fallocate reserves the pages now, so a full /dev/shm fails here
    // with ENOSPC instead of a SIGBUS on first touch in some worker.
    int rc = 0;
    if (reserve < size && ftruncate(fd, static_cast<off_t>(size)) != 0) rc = errno;
    if (rc == 0 && reserve > 0) rc = posix_fallocate(fd, 0, static_cast<off_t>(reserve));
    if (rc != 0) {
      ::close(fd);
      shm_unlink(name.c_str());
      throw_errno("allocating " + std::to_string(size) + " bytes of shared memory (" + name + ")",
                  rc);
    }
    void* p = nullptr;
    try {
      p = map_fd(fd, size, name);
    } catch (...) {
      shm_unlink(name.c_str());
      throw;
    }
    return SharedSegment(std::move(name), p, size, true);
  }
}

void SharedSegment::write(std::size_t offset, const void* src, std::size_t n) const {
  SHOAL_CHECK(offset <= size_ && n <= size_ - offset,
              "write of " + std::to_string(n) + " bytes at " + std::to_string(offset) +
                  " outside shared segment " + name_ + " of " + std::to_string(size_) + " bytes");
  if (n == 0) return;
  int fd = name_.empty() ? -1 : shm_open(name_.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) {
    std::memcpy(static_cast<unsigned char*>(data_) + offset, src, n);
    return;
  }
  const auto* p = static_cast<const unsigned char*>(src);
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = pwrite(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      throw_errno("writing " + std::to_string(n) + " bytes into shared segment " + name_, e);
    }
    if (r == 0) {
      ::close(fd);
      throw_errno("writing into shared segment " + name_ + " (no progress)", EIO);
    }
    done += static_cast<std::size_t>(r);
  }
  ::close(fd);
}

SharedSegment SharedSegment::attach(const std::string& name) {
  SHOAL_CHECK(!name.empty() && name[0] == '/' && name.find('/', 1) == std::string::npos,
              "invalid shared segment name '" + name + "'");
  int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) throw_errno("shm_open(attach) " + name);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw_errno("fstat " + name, e);
  }
  SHOAL_CHECK(st.st_size > 0, "shared segment " + name + " is empty");
  auto size = static_cast<std::size_t>(st.st_size);
  return SharedSegment(name, map_fd(fd, size, name), size, false);
}

SharedSegment::SharedSegment(SharedSegment&& other) noexcept
    : name_(std::move(other.name_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      owns_name_(std::exchange(other.owns_name_, false)),
      owner_pid_(std::exchange(other.owner_pid_, 0)) {}

SharedSegment& SharedSegment::operator=(SharedSegment&& other) noexcept {
  if (this != &other) {
    close();
    name_ = std::move(other.name_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    owns_name_ = std::exchange(other.owns_name_, false);
    owner_pid_ = std::exchange(other.owner_pid_, 0);
  }
  return *this;
}

SharedSegment::~SharedSegment() { close(); }

void SharedSegment::unlink() noexcept {
  if (!name_.empty()) shm_unlink(name_.c_str());
  owns_name_ = false;
}

void SharedSegment::close() noexcept {
  if (owns_name_ && owner_pid_ == getpid()) unlink();
  if (data_ != nullptr) munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

int sweep_orphan_segments(const std::string& dir) noexcept {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return 0;
  int removed = 0;
  const std::string prefix = segment_prefix;
  while (dirent* e = readdir(d)) {
    std::string entry = e->d_name;
    if (entry.compare(0, prefix.size(), prefix) != 0) continue;
    const char* pid_text = entry.c_str() + prefix.size();
    char* end = nullptr;
    long pid = std::strtol(pid_text, &end, 10);
    if (end == pid_text || *end != '.' || pid <= 0) continue;
    // kill(pid, 0) fails with ESRCH only when no such process exists.
    if (kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    if (shm_unlink(("/" + entry).c_str()) == 0) ++removed;
  }
  closedir(d);
  return removed;
}

}  // namespace shoal
