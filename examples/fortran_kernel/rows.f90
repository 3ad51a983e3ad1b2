! The course's 2D integration of sin(x+y) over [0, pi]^2, as a kernel that
! shoal.parallel_reduce calls from its C++ threads. Seen from C it is
!
!     double rows_f(int64_t begin, int64_t end, double* params)
!
! the partial sum of the x-rows [begin, end) (numbered from 0, as in C), with
! params = (n, h) in the context pointer. See run.py, which builds and calls it.
module integration_rows
  use, intrinsic :: iso_c_binding, only: c_double, c_int64_t
  implicit none
contains
  ! bind(c): no name mangling, the C calling convention; "rows_f" is the symbol.
  function rows_f(row_begin, row_end, params) result(s) bind(c, name="rows_f")
    ! value: begin and end arrive as C passes int64_t, by value (Fortran's default
    ! is by reference). params has no value attribute: it is the double* ctx.
    integer(c_int64_t), value, intent(in) :: row_begin, row_end
    real(c_double), intent(in) :: params(2)
    real(c_double) :: s
    ! Locals without initialisers (an initialiser would imply SAVE): every call,
    ! on every thread, has its own.
    real(c_double) :: h, x, y
    integer(c_int64_t) :: i, j, n

    n = int(params(1), c_int64_t)
    h = params(2)
    s = 0.0_c_double
    do i = row_begin, row_end - 1
      x = h * (real(i, c_double) + 0.5_c_double)
      do j = 0, n - 1
        y = h * (real(j, c_double) + 0.5_c_double)
        s = s + sin(x + y)
      end do
    end do
  end function rows_f
end module integration_rows
