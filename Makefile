# shoal — the two commands of the Quick start:
#   make demo   install what is needed, build, run shoal's main job
#   make test   the same set-up, then every test (C++: plain, ASan, TSan; fuzzers; Python)
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
JOBS    ?= $(shell nproc)
CMAKE_COMMON := -G Ninja -DSHOAL_TESTS=ON -DSHOAL_PYTHON=OFF
# In CI (CI=true) the extension is built with warnings as errors too.
PIP_WERROR := $(if $(CI),-C cmake.define.SHOAL_WERROR=ON,)

.PHONY: demo test setup system-deps venv install cpp-test asan tsan sanitize pytest mpi-test bench fuzz fuzz-smoke clean

demo: install
	$(VENV)/bin/shoal demo

test: install cpp-test sanitize fuzz-smoke pytest mpi-test

setup: install

system-deps:
	@scripts/ensure-system-deps.sh

$(VENV)/.deps-stamp: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.0" \
	    numpy cloudpickle threadpoolctl psutil tqdm \
	    pytest pytest-timeout numba joblib pandas mpi4py ipykernel jupyter_client matplotlib
	touch $@

venv: system-deps $(VENV)/.deps-stamp

install: venv
	$(PY) -m pip install -q --no-build-isolation --no-deps $(PIP_WERROR) .

# C++ suites, warnings as errors.
cpp-test: system-deps
	cmake -S . -B build/cpp $(CMAKE_COMMON) -DSHOAL_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build/cpp -j $(JOBS)
	ctest --test-dir build/cpp --output-on-failure -j $(JOBS)

asan: system-deps
	cmake -S . -B build/asan $(CMAKE_COMMON) -DSHOAL_WERROR=ON -DSHOAL_SANITIZE=address -DCMAKE_BUILD_TYPE=Debug
	cmake --build build/asan -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 ctest --test-dir build/asan --output-on-failure -j $(JOBS)

# TSan needs a low-entropy address space on kernels with high mmap ASLR bits.
tsan: system-deps
	cmake -S . -B build/tsan $(CMAKE_COMMON) -DSHOAL_WERROR=ON -DSHOAL_SANITIZE=thread -DCMAKE_BUILD_TYPE=Debug
	cmake --build build/tsan -j $(JOBS)
	TSAN_OPTIONS=halt_on_error=1 setarch $$(uname -m) -R ctest --test-dir build/tsan --output-on-failure -j $(JOBS)

sanitize: asan tsan

pytest: install
	$(PY) -m pytest -q tests/python

# The Pool/Executor contract suites once more, on backend="mpi", in real mpirun
# jobs of 2, 3 and 5 ranks (rank 0 runs pytest, the others serve), and of 5
# ranks as 2 virtual nodes of 2 (root -> 2 leaders -> their workers). One rank,
# bad launches, dying workers and ranks: tests/python/test_mpi.py, in pytest.
MPIRUN := OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe
MPI_SUITES := tests/python/test_conformance_pool.py tests/python/test_conformance_executor.py
mpi-test: install
	@for spec in 2:0 3:0 5:0 5:2; do n=$${spec%:*}; size=$${spec#*:}; \
	  echo "== the contract suites on backend=mpi under mpirun -n $$n (SHOAL_MPI_NODE_SIZE=$$size)"; \
	  SHOAL_TEST_BACKENDS=mpi SHOAL_MPI_NODE_SIZE=$$size $(MPIRUN) -n $$n -x SHOAL_MPI_NODE_SIZE \
	    $(PY) -m shoal.mpi -m pytest -q -p no:cacheprovider --color=no \
	    -W ignore::shoal.OversubscriptionWarning $(MPI_SUITES) || exit 1; \
	done

bench: install
	$(PY) benchmarks/run_all.py

fuzz: system-deps
	CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DSHOAL_FUZZ=ON -DSHOAL_PYTHON=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
	cmake --build build/fuzz -j $(JOBS)
	scripts/run-fuzzers.sh build/fuzz/fuzz $${FUZZ_SECONDS:-30}

# A short fuzzing run of every target (part of make test); make fuzz runs longer.
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=10

clean:
	rm -rf build $(VENV)
