#!/usr/bin/env bash
# Runs every libFuzzer target in $1 for $2 seconds each, seeded from fuzz/corpus/<name>.
set -euo pipefail
dir=$1; seconds=${2:-30}
found=0
for f in "$dir"/fuzz_*; do
  [ -x "$f" ] || continue
  found=1
  name=$(basename "$f")
  mkdir -p "build/fuzz/corpus/$name" "fuzz/corpus/$name"
  echo "== $name ($seconds s)"
  "$f" -max_total_time="$seconds" -print_final_stats=0 "build/fuzz/corpus/$name" "fuzz/corpus/$name" 2>&1 | tail -2
done
[ $found -eq 1 ] || { echo "no fuzz targets built in $dir" >&2; exit 1; }
