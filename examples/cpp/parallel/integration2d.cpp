// The course's 2D integration of sin(x+y) over [0, pi]^2 with shoal's C++ API:
// shoal::parallel_reduce is to this loop what `#pragma omp parallel for
// reduction(+:mysum)` is in the course's Fortran.
//
//   cmake -S examples/cpp/parallel -B build/example-parallel -DCMAKE_PREFIX_PATH=<shoal install prefix>
//   cmake --build build/example-parallel && build/example-parallel/integration2d 10000
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "shoal/parallel.hpp"

int main(int argc, char** argv) {
  const std::int64_t n = argc > 1 ? std::atoll(argv[1]) : 10000;
  const double h = M_PI / static_cast<double>(n);
  shoal::ReduceOptions opts;
  opts.threads = argc > 2 ? std::atoi(argv[2]) : 0;  // 0: every core this process may use
  opts.deterministic = argc > 3;                     // same bits for any thread count

  const auto start = std::chrono::steady_clock::now();
  const double mysum = shoal::parallel_reduce(
      0, n, 0.0,
      [&](std::int64_t begin, std::int64_t end, double acc) {  // rows [begin, end)
        for (std::int64_t i = begin; i < end; ++i) {
          const double x = h * (static_cast<double>(i) + 0.5);
          for (std::int64_t j = 0; j < n; ++j) acc += std::sin(x + h * (static_cast<double>(j) + 0.5));
        }
        return acc;
      },
      std::plus<double>(), opts);
  const double integral = h * h * mysum;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("Integral value is %e, Error is %e\n", integral, std::abs(integral));
  std::printf("Time spent: %.2f sec on %d thread(s)\n", seconds,
              opts.threads > 0 ? opts.threads : shoal::ThreadPool::default_concurrency());
  return 0;
}
