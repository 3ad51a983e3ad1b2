// shoal/worker_supervisor.hpp — starts worker processes and notices at once
// when one dies.
//
//   caller thread                 supervisor thread (one per pool)
//   spawn(slot, argv, env, fd) ──> request queue + eventfd ──> posix_spawn
//                       <── pid ── (the supervisor thread is the workers'
//                                   parent thread: PR_SET_PDEATHSIG fires when
//                                   IT exits, so it must be the long-lived one)
//                                  poll(eventfd, pidfd per worker)
//   take_exits() <── exits list <── pidfd readable: waitid() reaps, records
//                                   exit code / signal, calls on_exit()
//
// Workers are started with posix_spawn (vfork+exec: safe in a process that
// runs threads, unlike fork), in their own process group (a terminal's Ctrl-C
// reaches only the driver), with a clean signal mask, every descriptor but
// 0-2 closed and the pool's channel descriptor at fd 3.
// Without pidfd_open (Linux < 5.3) it falls back to polling waitpid every 20 ms.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace shoal {

struct WorkerExit {
  int slot = -1;
  pid_t pid = 0;
  int exit_code = -1;  // valid if signal == 0
  int signal = 0;      // the signal that killed it, or 0
};

class WorkerSupervisor {
 public:
  // on_exit runs on the supervisor thread after each recorded death (used to
  // ring the driver's doorbell). It must not call back into the supervisor.
  explicit WorkerSupervisor(std::function<void()> on_exit);
  ~WorkerSupervisor();  // stop(0): kills and reaps every worker
  WorkerSupervisor(const WorkerSupervisor&) = delete;
  WorkerSupervisor& operator=(const WorkerSupervisor&) = delete;

  // Starts argv[0] (a path) with exactly `env`, `pass_fd` as descriptor 3.
  // Returns its pid. Throws SystemError if the spawn failed.
  pid_t spawn(int slot, const std::vector<std::string>& argv, const std::vector<std::string>& env,
              int pass_fd);
  // Watches a child this process forked itself (before this supervisor's
  // thread existed: a single-threaded driver may fork). Throws if it cannot.
  void adopt(int slot, pid_t pid);
  // Sends sig to a live worker (through its pidfd: no pid-reuse race).
  // Returns false if it is no longer alive.
  bool signal(pid_t pid, int sig);
  // Deaths recorded since the last call.
  std::vector<WorkerExit> take_exits();
  // Workers started and not yet reaped.
  std::size_t alive() const;
  // Waits up to grace_seconds for every worker to exit, SIGKILLs the rest,
  // reaps them all and stops the thread. Idempotent.
  void stop(double grace_seconds);

  bool uses_pidfd() const noexcept { return use_pidfd_; }

 private:
  struct Child {
    int slot;
    int pidfd;  // -1 in the waitpid fallback
  };
  struct SpawnRequest {
    int slot;
    const std::vector<std::string>* argv;
    const std::vector<std::string>* env;
    int pass_fd;
    pid_t pid = 0;
    int error = 0;
    bool done = false;
  };

  void run();
  void do_spawn(SpawnRequest& r);
  void reap(pid_t pid, const Child& c);
  void kick() noexcept;

  std::function<void()> on_exit_;
  int event_fd_ = -1;
  bool use_pidfd_ = true;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<pid_t, Child> children_;       // guarded by mu_
  std::vector<SpawnRequest*> requests_;   // guarded by mu_
  std::vector<WorkerExit> exits_;         // guarded by mu_
  bool stopping_ = false;                 // guarded by mu_
  double grace_ = 0;                      // guarded by mu_
  std::thread thread_;
  // The process whose thread this is. In a forked copy (a child of the driver
  // that exits normally) the thread does not exist and the workers are the
  // parent's: stop() and the destructor then touch neither.
  pid_t owner_pid_ = 0;
};

// ---- inside a worker ----

// Ties this worker's life to its driver: PR_SET_PDEATHSIG(SIGTERM) with a
// handler that removes the shared-memory segments named after the driver and
// after this worker (async-signal-safe: raw getdents64 + unlink), then dies.
// If the driver is already gone, does the same at once.
// parent_pid: the worker's parent when that is not the driver (the pool's
// fork server). Its death ends the worker too, but the driver's segments are
// removed only if the driver is gone as well.
void guard_worker(pid_t driver_pid, pid_t parent_pid = 0);

// Removes /dev/shm/shoal.<pid>.* (async-signal-safe). Returns how many.
int sweep_segments_of(pid_t pid) noexcept;

}  // namespace shoal
