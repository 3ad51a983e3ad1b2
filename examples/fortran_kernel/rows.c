/* The same kernel in C: the partial sum of sin(x+y) over the x-rows
 * [begin, end) of the course's 2D integration, params = (n, h). */
#include <math.h>
#include <stdint.h>

double rows_c(int64_t begin, int64_t end, const double* params) {
  const int64_t n = (int64_t)params[0];
  const double h = params[1];
  double s = 0.0;
  for (int64_t i = begin; i < end; ++i) {
    const double x = h * ((double)i + 0.5);
    for (int64_t j = 0; j < n; ++j) {
      const double y = h * ((double)j + 0.5);
      s += sin(x + y);
    }
  }
  return s;
}
