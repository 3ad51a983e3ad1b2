#!/usr/bin/env bash
# Installs the Debian packages shoal builds against, when missing.
# As root: apt-get install. Otherwise: print the exact command and fail.
set -euo pipefail
# gcc (cc) and gfortran build examples/fortran_kernel (tests/python/test_examples_native.py).
# chromium renders the monitor's HTML report headless (tests/python/test_monitor_report.py).
packages=(cmake gcc g++ gfortran make ninja-build pkg-config python3-venv
          libhwloc-dev hwloc libopenmpi-dev openmpi-bin
          libgtest-dev libbenchmark-dev clang libclang-rt-dev libomp-dev
          libtbb-dev chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-venv is only needed when the python3 on PATH is Debian's own.
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
fi
read -r -a missing <<< "${missing[*]}"
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "shoal: installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "shoal needs these system packages; install them and run make again:" >&2
  echo "  sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
