#include "shoal/worker_supervisor.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "shoal/check.hpp"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace shoal {

namespace {

int pidfd_open_(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

int pidfd_send_signal_(int pidfd, int sig) {
  return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

WorkerExit decode_status(int slot, pid_t pid, const siginfo_t& si) {
  WorkerExit e;
  e.slot = slot;
  e.pid = pid;
  if (si.si_code == CLD_EXITED) {
    e.exit_code = si.si_status;
  } else {
    e.signal = si.si_status;
  }
  return e;
}

}  // namespace

WorkerSupervisor::WorkerSupervisor(std::function<void()> on_exit) : on_exit_(std::move(on_exit)) {
  event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) throw_errno("eventfd for the worker supervisor");
  // Probe pidfd support once with our own pid.
  int probe = pidfd_open_(getpid());
  if (probe >= 0) {
    ::close(probe);
  } else {
    use_pidfd_ = false;
  }
  owner_pid_ = getpid();
  thread_ = std::thread([this] { run(); });
}

WorkerSupervisor::~WorkerSupervisor() {
  stop(0);
  if (event_fd_ >= 0) ::close(event_fd_);
}

void WorkerSupervisor::kick() noexcept {
  std::uint64_t one = 1;
  ssize_t r = write(event_fd_, &one, sizeof one);
  (void)r;  // EAGAIN: the counter is already non-zero, the thread will look anyway
}

pid_t WorkerSupervisor::spawn(int slot, const std::vector<std::string>& argv,
                              const std::vector<std::string>& env, int pass_fd) {
  SHOAL_CHECK(!argv.empty(), "spawn: empty argv");
  SpawnRequest req{slot, &argv, &env, pass_fd};
  std::unique_lock lock(mu_);
  SHOAL_CHECK(!stopping_, "spawn: the supervisor is stopping");
  requests_.push_back(&req);
  kick();
  cv_.wait(lock, [&] { return req.done; });
  if (req.error != 0) throw_errno("starting worker process " + argv[0], req.error);
  return req.pid;
}

void WorkerSupervisor::do_spawn(SpawnRequest& r) {
  std::vector<char*> argv;
  for (const auto& a : *r.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : *r.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  posix_spawnattr_t attr;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_init(&fa);
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);
  int tmp = -1;
  int fd = r.pass_fd;
  if (fd == 3) {  // dup2(3, 3) would not clear close-on-exec everywhere
    tmp = fcntl(fd, F_DUPFD_CLOEXEC, 10);
    fd = tmp;
  }
  if (fd >= 0) posix_spawn_file_actions_adddup2(&fa, fd, 3);
  posix_spawn_file_actions_addclosefrom_np(&fa, 4);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (tmp >= 0) ::close(tmp);
  if (rc != 0) {
    r.error = rc;
    return;
  }
  Child c{r.slot, -1};
  if (use_pidfd_) {
    c.pidfd = pidfd_open_(pid);
    if (c.pidfd < 0) {
      // Cannot watch it: do not leave it running unwatched.
      int e = errno;
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      r.error = e;
      return;
    }
  }
  children_[pid] = c;
  r.pid = pid;
}

void WorkerSupervisor::adopt(int slot, pid_t pid) {
  Child c{slot, -1};
  if (use_pidfd_) {
    c.pidfd = pidfd_open_(pid);
    if (c.pidfd < 0) throw_errno("pidfd_open of forked worker " + std::to_string(pid));
  }
  {
    std::lock_guard lock(mu_);
    children_[pid] = c;
  }
  kick();  // the supervisor thread rebuilds its poll set
}

bool WorkerSupervisor::signal(pid_t pid, int sig) {
  std::lock_guard lock(mu_);
  auto it = children_.find(pid);
  if (it == children_.end()) return false;
  if (it->second.pidfd >= 0) return pidfd_send_signal_(it->second.pidfd, sig) == 0;
  return kill(pid, sig) == 0;
}

std::vector<WorkerExit> WorkerSupervisor::take_exits() {
  std::lock_guard lock(mu_);
  return std::exchange(exits_, {});
}

std::size_t WorkerSupervisor::alive() const {
  std::lock_guard lock(mu_);
  return children_.size();
}

void WorkerSupervisor::reap(pid_t pid, const Child& c) {
  // Caller holds mu_.
  if (c.pidfd >= 0) ::close(c.pidfd);
  (void)pid;
}

void WorkerSupervisor::run() {
  using clock = std::chrono::steady_clock;
  clock::time_point kill_at{};
  bool killed = false;
  std::vector<pollfd> fds;
  std::vector<pid_t> pids;
  while (true) {
    bool stopping;
    {
      std::lock_guard lock(mu_);
      for (SpawnRequest* r : requests_) {
        do_spawn(*r);
        r->done = true;
      }
      if (!requests_.empty()) cv_.notify_all();
      requests_.clear();

      // Reap whatever has exited.
      bool died = false;
      for (auto it = children_.begin(); it != children_.end();) {
        siginfo_t si{};
        int rc = it->second.pidfd >= 0
                     ? waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(it->second.pidfd),
                              &si, WEXITED | WNOHANG)
                     : waitid(P_PID, static_cast<id_t>(it->first), &si, WEXITED | WNOHANG);
        if ((rc == 0 && si.si_pid != 0) || (rc != 0 && errno == ECHILD)) {
          WorkerExit e = rc == 0 ? decode_status(it->second.slot, it->first, si)
                                 : WorkerExit{it->second.slot, it->first, -1, 0};
          exits_.push_back(e);
          reap(it->first, it->second);
          it = children_.erase(it);
          died = true;
        } else {
          ++it;
        }
      }
      if (died && on_exit_) on_exit_();

      stopping = stopping_;
      if (stopping) {
        if (kill_at == clock::time_point{})
          kill_at = clock::now() + std::chrono::duration_cast<clock::duration>(
                                       std::chrono::duration<double>(grace_));
        if (children_.empty()) break;
        if (!killed && clock::now() >= kill_at) {
          for (auto& [pid, c] : children_) {
            if (c.pidfd >= 0) pidfd_send_signal_(c.pidfd, SIGKILL);
            else kill(pid, SIGKILL);
          }
          killed = true;
        }
      }
      fds.assign(1, pollfd{event_fd_, POLLIN, 0});
      for (auto& [pid, c] : children_)
        if (c.pidfd >= 0) fds.push_back(pollfd{c.pidfd, POLLIN, 0});
    }
    int timeout_ms = use_pidfd_ ? -1 : 20;
    if (stopping) timeout_ms = 10;
    int n = poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) timeout_ms = 10;  // should not happen; do not spin hot
    if (fds[0].revents & POLLIN) {
      std::uint64_t v;
      ssize_t r = read(event_fd_, &v, sizeof v);
      (void)r;
    }
  }
}

void WorkerSupervisor::stop(double grace_seconds) {
  if (getpid() != owner_pid_) {
    // A forked copy: its thread handle names a thread of the parent. Leak the
    // handle (joining or detaching it would act on a thread that is not
    // here; destroying it joinable would std::terminate).
    if (thread_.joinable()) (void)new std::thread(std::move(thread_));  // NOLINT
    return;
  }
  {
    std::lock_guard lock(mu_);
    if (!stopping_) {
      stopping_ = true;
      grace_ = grace_seconds < 0 ? 0 : grace_seconds;
    }
  }
  kick();
  if (thread_.joinable()) thread_.join();
}

// ------------------------------------------------------------ worker guard

namespace {

pid_t g_driver_pid = 0;
pid_t g_parent_pid = 0;  // the worker's parent: the driver, or the fork server

// "shoal.<pid>." into buf (no snprintf: async-signal-safe).
std::size_t segment_prefix_of(pid_t pid, char* buf) {
  const char* p = "shoal.";
  std::size_t n = 0;
  while (*p) buf[n++] = *p++;
  char digits[24];
  int d = 0;
  auto v = static_cast<unsigned long>(pid);
  do {
    digits[d++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (d > 0) buf[n++] = digits[--d];
  buf[n++] = '.';
  buf[n] = '\0';
  return n;
}

struct linux_dirent64 {
  ino64_t d_ino;
  off64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

// PR_SET_PDEATHSIG fires when the parent THREAD (the supervisor thread) exits.
// While the driver dies its threads exit one by one, so the signal may come
// while getppid() still names the dying driver: the signal's sender (si_pid,
// the exiting thread's process) tells it apart from a SIGTERM sent by anyone
// else. The driver itself never sends SIGTERM to a worker (it uses the
// channel, or SIGKILL), and its supervisor thread only ends after reaping
// every worker, so either case means the driver is gone.
//
// A worker of the fork server (g_parent_pid != g_driver_pid) gets the signal
// when the server dies; the driver may live on (the server was killed): its
// segments are then still in use, and only this worker's own are removed.
void on_parent_death(int sig, siginfo_t* info, void*) {
  int saved = errno;
  const bool from_parent = info != nullptr && info->si_pid == g_parent_pid;
  if (from_parent || getppid() != g_parent_pid) {
    if (g_parent_pid == g_driver_pid || (kill(g_driver_pid, 0) != 0 && errno == ESRCH))
      sweep_segments_of(g_driver_pid);
    sweep_segments_of(getpid());
  }
  errno = saved;
  // SA_RESETHAND restored the default action; re-raise so our exit status
  // says which signal ended us.
  raise(sig);
}

}  // namespace

int sweep_segments_of(pid_t pid) noexcept {
  char prefix[48];
  const std::size_t plen = segment_prefix_of(pid, prefix);
  int dir = open("/dev/shm", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return 0;
  int removed = 0;
  alignas(8) char buf[4096];
  while (true) {
    long n = syscall(SYS_getdents64, dir, buf, sizeof buf);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      auto* d = reinterpret_cast<linux_dirent64*>(buf + off);
      off += d->d_reclen;
      if (std::strncmp(d->d_name, prefix, plen) == 0 && unlinkat(dir, d->d_name, 0) == 0) ++removed;
    }
  }
  ::close(dir);
  return removed;
}

void guard_worker(pid_t driver_pid, pid_t parent_pid) {
  g_driver_pid = driver_pid;
  g_parent_pid = parent_pid > 0 ? parent_pid : driver_pid;
  struct sigaction sa {};
  sa.sa_sigaction = on_parent_death;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_SIGINFO;
  if (sigaction(SIGTERM, &sa, nullptr) != 0) throw_errno("sigaction(SIGTERM) in worker");
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) throw_errno("prctl(PR_SET_PDEATHSIG)");
  // The parent may have died before prctl: then no signal will ever come.
  if (getppid() != g_parent_pid) on_parent_death(SIGTERM, nullptr, nullptr);
}

}  // namespace shoal
