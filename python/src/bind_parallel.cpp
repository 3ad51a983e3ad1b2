// shoal._core: native-kernel loops and the thread pool of the threads backend.
// Conversion only: validation of kernels and contexts is in python/shoal/parallel.py,
// scheduling in libshoal (shoal/parallel.hpp, shoal/thread_pool.hpp).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>

#include "registry.hpp"
#include "shoal/check.hpp"
#include "shoal/loop_timer.hpp"
#include "shoal/parallel.hpp"
#include "shoal/sampler.hpp"
#include "shoal/thread_pool.hpp"

namespace nb = nanobind;

namespace {

using ForKernel = void (*)(std::int64_t, std::int64_t, void*);
template <class T>
using ReduceKernel = T (*)(std::int64_t, std::int64_t, void*);

// monitor: the recording Sampler, or null (then no clock is read).
std::unique_ptr<shoal::LoopTimer> timer_for(shoal::Sampler* monitor, int threads) {
  if (monitor == nullptr) return nullptr;
  const int size = threads > 0 ? threads : shoal::ThreadPool::global().size() + 1;
  return std::make_unique<shoal::LoopTimer>(size);
}

void run_for(std::int64_t n, std::uintptr_t kernel, std::uintptr_t ctx, int threads,
             std::int64_t grain, shoal::Sampler* monitor) {
  SHOAL_CHECK(kernel != 0, "parallel_for: kernel address is 0");
  auto k = reinterpret_cast<ForKernel>(kernel);
  void* c = reinterpret_cast<void*>(ctx);
  shoal::LoopOptions o;
  o.grain = grain;
  o.threads = threads;
  auto timer = timer_for(monitor, threads);
  if (timer == nullptr) {
    shoal::parallel_for(0, n, [k, c](std::int64_t b, std::int64_t e) { k(b, e, c); }, o);
    return;
  }
  shoal::LoopTimer* t = timer.get();
  shoal::parallel_for(0, n, [k, c, t](std::int64_t b, std::int64_t e) {
    t->time([&] { k(b, e, c); });
  }, o);
  monitor->native_loop(*timer);
}

template <class T, class Combine>
T reduce_with(std::int64_t n, ReduceKernel<T> k, void* c, T identity, Combine combine,
              const shoal::ReduceOptions& o, shoal::LoopTimer* t) {
  if (t == nullptr)
    return shoal::parallel_reduce(
        0, n, identity,
        [k, c, combine](std::int64_t b, std::int64_t e, T init) { return combine(init, k(b, e, c)); },
        combine, o);
  return shoal::parallel_reduce(
      0, n, identity,
      [k, c, combine, t](std::int64_t b, std::int64_t e, T init) {
        return t->time([&] { return combine(init, k(b, e, c)); });
      },
      combine, o);
}

template <class T, class = void>
struct Wrapping {
  using type = T;
};
template <class T>
struct Wrapping<T, std::enable_if_t<std::is_integral_v<T>>> {
  using type = std::make_unsigned_t<T>;
};

template <class T>
T run_reduce(std::int64_t n, std::uintptr_t kernel, std::uintptr_t ctx, const std::string& op,
             int threads, bool deterministic, std::int64_t grain, shoal::Sampler* monitor) {
  auto timer = timer_for(monitor, threads);
  struct Record {  // the loop's record, also when it threw
    shoal::Sampler* m;
    shoal::LoopTimer* t;
    ~Record() {
      if (m != nullptr) m->native_loop(*t);
    }
  } record{monitor, timer.get()};
  shoal::LoopTimer* t = timer.get();
  SHOAL_CHECK(kernel != 0, "parallel_reduce: kernel address is 0");
  auto k = reinterpret_cast<ReduceKernel<T>>(kernel);
  void* c = reinterpret_cast<void*>(ctx);
  shoal::ReduceOptions o;
  o.grain = grain;
  o.threads = threads;
  o.deterministic = deterministic;
  using L = std::numeric_limits<T>;
  // Integers wrap around on overflow, as numpy's int64 does (unsigned arithmetic: no UB).
  using W = typename Wrapping<T>::type;
  if (op == "sum")
    return reduce_with<T>(n, k, c, T(0), [](T a, T b) { return static_cast<T>(W(a) + W(b)); }, o, t);
  if (op == "prod")
    return reduce_with<T>(n, k, c, T(1), [](T a, T b) { return static_cast<T>(W(a) * W(b)); }, o, t);
  if (op == "min")
    return reduce_with<T>(n, k, c, L::has_infinity ? L::infinity() : L::max(),
                          [](T a, T b) { return b < a ? b : a; }, o, t);
  if (op == "max")
    return reduce_with<T>(n, k, c, L::has_infinity ? -L::infinity() : L::lowest(),
                          [](T a, T b) { return b > a ? b : a; }, o, t);
  SHOAL_CHECK(false, "parallel_reduce: op must be sum, prod, min or max, not '" + op + "'");
  return T(0);
}

// The threads backend's pool: C++ workers that run Python callables.
//
// Each worker makes one Python thread state when it starts and keeps it until
// it exits, so threading.local() set by an initializer survives between tasks;
// between tasks it holds no GIL.
bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

thread_local PyThreadState* tl_tstate = nullptr;
thread_local PyGILState_STATE tl_gilstate;

// The pool of the threads backend. It owns a reference to its Python
// on_start hook (the backend's per-thread initializer), and that hook can lead
// back to the pool (initializer -> its module's globals -> the user's Pool ->
// this object): tp_traverse/tp_clear below let the garbage collector see and
// break such a cycle, which otherwise outlived the interpreter ("nanobind:
// leaked 1 instances" at every exit of a script with an initializer).
class PyThreadPool {
 public:
  // Shared with the worker threads, which call it once as they start; read
  // and cleared only with the GIL held.
  struct Hook {
    PyObject* fn = nullptr;
  };

  PyThreadPool(int workers, nb::object on_start) : hook_(std::make_shared<Hook>()) {
    SHOAL_CHECK(workers >= 1, "a thread pool needs at least 1 worker, got " + std::to_string(workers));
    if (!on_start.is_none()) hook_->fn = on_start.release().ptr();
    pool_ = std::make_unique<shoal::ThreadPool>(
        workers, shoal::Pinning::none,
        [hook = hook_](int index) {
          tl_gilstate = PyGILState_Ensure();
          if (PyObject* fn = hook->fn; fn != nullptr) {
            Py_INCREF(fn);  // tp_clear may drop the pool's reference meanwhile
            PyObject* r = PyObject_CallFunction(fn, "i", index);
            if (r == nullptr) PyErr_WriteUnraisable(fn);
            Py_XDECREF(r);
            Py_DECREF(fn);
          }
          tl_tstate = PyEval_SaveThread();
        },
        [](int) {
          PyEval_RestoreThread(tl_tstate);
          PyGILState_Release(tl_gilstate);  // deletes the thread state, drops the GIL
        });
    pool_->set_hosts_loops(false);
  }
  ~PyThreadPool() {
    if (pool_) {
      if (pool_->worker_index() >= 0) {
        // Dropped by one of its own tasks: it cannot wait for itself. Its
        // workers end once the queue is empty; the object is left behind.
        pool_->stop();
        (void)pool_.release();
      } else if (interpreter_finalizing()) {
        // Workers cannot take the GIL any more: joining could wait forever.
        (void)pool_.release();
      } else {
        nb::gil_scoped_release unlocked;
        pool_.reset();
      }
    }
    if (!interpreter_finalizing()) clear_hook();
  }
  // GIL held.
  void clear_hook() { Py_CLEAR(hook_->fn); }
  PyObject* hook() const { return hook_->fn; }
  PyThreadPool(const PyThreadPool&) = delete;
  PyThreadPool& operator=(const PyThreadPool&) = delete;

  // Runs fn() on a worker. fn must handle its own exceptions (shoal's Python
  // side does); one that escapes is reported as unraisable.
  void submit(nb::object fn) {
    SHOAL_CHECK(pool_ != nullptr, "thread pool already joined");
    PyObject* p = fn.release().ptr();
    try {
      pool_->submit([p] {
        nb::gil_scoped_acquire locked;
        PyObject* r = PyObject_CallNoArgs(p);
        if (r == nullptr) PyErr_WriteUnraisable(p);
        Py_XDECREF(r);
        Py_DECREF(p);
      });
    } catch (...) {
      Py_DECREF(p);
      throw;
    }
  }
  void stop() {
    if (pool_) pool_->stop();
  }
  void join() {  // called with the GIL released
    if (pool_) pool_->join();
  }
  int size() const { return pool_ ? pool_->size() : 0; }
  bool in_worker() const { return pool_ && pool_->worker_index() >= 0; }

 private:
  std::shared_ptr<Hook> hook_;
  std::unique_ptr<shoal::ThreadPool> pool_;
};

int thread_pool_traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  if (!nb::inst_ready(self)) return 0;  // the constructor has not finished
  Py_VISIT(nb::inst_ptr<PyThreadPool>(self)->hook());
  return 0;
}

int thread_pool_clear(PyObject* self) {
  if (nb::inst_ready(self)) nb::inst_ptr<PyThreadPool>(self)->clear_hook();
  return 0;
}

PyType_Slot thread_pool_slots[] = {
    {Py_tp_traverse, reinterpret_cast<void*>(thread_pool_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(thread_pool_clear)},
    {0, nullptr}};

void bind(nb::module_& m) {
  using nb::arg;
  m.def("parallel_for", &run_for, arg("n"), arg("kernel"), arg("ctx"), arg("threads"), arg("grain"),
        arg("monitor").none() = nb::none(), nb::call_guard<nb::gil_scoped_release>(),
        "Runs void kernel(int64 begin, int64 end, void* ctx) over [0, n) on the thread pool.");
  m.def("parallel_reduce_f64", &run_reduce<double>, arg("n"), arg("kernel"), arg("ctx"), arg("op"),
        arg("threads"), arg("deterministic"), arg("grain"), arg("monitor").none() = nb::none(),
        nb::call_guard<nb::gil_scoped_release>());
  m.def("parallel_reduce_i64", &run_reduce<std::int64_t>, arg("n"), arg("kernel"), arg("ctx"),
        arg("op"), arg("threads"), arg("deterministic"), arg("grain"),
        arg("monitor").none() = nb::none(), nb::call_guard<nb::gil_scoped_release>());
  m.def("buffer_address", [](nb::handle obj) -> std::uintptr_t {
    // Any contiguous buffer (C or Fortran order, read-only allowed): its first byte.
    Py_buffer view;
    if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_ANY_CONTIGUOUS) != 0) throw nb::python_error();
    const auto address = reinterpret_cast<std::uintptr_t>(view.buf);
    PyBuffer_Release(&view);
    return address;
  }, arg("obj"), "Address of the first byte of a contiguous buffer (kept alive by the caller).");
  m.def("default_threads", [] { return shoal::ThreadPool::global().size() + 1; },
        "Threads a native loop uses by default (the caller included).");

  nb::class_<PyThreadPool>(m, "ThreadPool", nb::type_slots(thread_pool_slots))
      .def(nb::init<int, nb::object>(), arg("workers"), arg("on_start") = nb::none())
      .def("submit", &PyThreadPool::submit, arg("fn"))
      .def("stop", &PyThreadPool::stop)
      .def("join", &PyThreadPool::join, nb::call_guard<nb::gil_scoped_release>())
      .def_prop_ro("size", &PyThreadPool::size)
      .def("in_worker", &PyThreadPool::in_worker, "Whether the calling thread is one of its workers.");
}

shoal::py::Register reg(bind);

}  // namespace
