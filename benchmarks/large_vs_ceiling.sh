#!/usr/bin/env bash
# Large-data check of the engine targets, outside the quick suite: sruns-stream archive
# (auto, local dest, defaults) against the ISA-L ceiling (GNU tar | igzip_threaded -T 2
# -l 1 to a file, fsynced) and `tar | pigz -p 2 -1`, interleaved, 3 repetitions, on the
# cached 1 GiB MiSeq-style and 2 GiB NovaSeq-style runs. Generate them first with
# `python -m benchmarks --datasets miseq,novaseq` (full mode) or make_fake_run.py into
# benchmarks/.cache/<kind>-<bytes>-s0-fdefault/<run>. Prints one line per timing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for ds in miseq-1073741824-s0-fdefault/240101_M00001_0001_000000000-BENCH \
          novaseq-2147483648-s0-fdefault/240101_A00001_0001_BHBENCHDXX; do
  R=benchmarks/.cache/$ds
  [ -d "$R" ] || { echo "missing $R: generate it first (see the header)"; continue; }
  name=$(basename "$R"); parent=$(dirname "$R")
  find "$R" -type f -exec cat {} + > /dev/null  # warm the page cache for every competitor alike
  for rep in 1 2 3; do
    rm -rf "${out:?}"/*
    s=$(date +%s.%N)
    python3 -m sruns_stream archive "$R" --dest "$out/a" --journal "$out/j.db" --json > "$out/res.json"
    e=$(date +%s.%N)
    echo "$name sruns-stream $(echo "$e - $s" | bc) s (own MB/s $(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['mb_per_s'])" "$out/res.json"))"
    rm -rf "${out:?}"/*
    s=$(date +%s.%N)
    tar -cf - -C "$parent" "$name" | python3 -m benchmarks.baselines igzip-threaded -T 2 -l 1 > "$out/c.tar.gz"
    sync "$out/c.tar.gz"
    e=$(date +%s.%N)
    echo "$name ceiling $(echo "$e - $s" | bc) s"
    case $name in *M00001*)
      rm -rf "${out:?}"/*
      s=$(date +%s.%N)
      tar -cf - -C "$parent" "$name" | pigz -p 2 -1 > "$out/p.tar.gz"
      sync "$out/p.tar.gz"
      e=$(date +%s.%N)
      echo "$name pigz-1 $(echo "$e - $s" | bc) s" ;;
    esac
  done
done
