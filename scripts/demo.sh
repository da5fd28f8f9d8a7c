#!/usr/bin/env bash
# The main job on its embedded default, no cloud account needed: generate a 200 MB
# MiSeq-style run folder, archive it to a local directory, and check the result with
# GNU tar and gzip (the oracles). Everything lives under ${DEMO_DIR:-/tmp/sruns-demo}.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
demo=${DEMO_DIR:-/tmp/sruns-demo}
run=240101_M00001_0001_000000000-DEMO1

rm -rf "$demo"
mkdir -p "$demo"
python3 "$repo/scripts/make_fake_run.py" "$demo/$run" --kind miseq --size "${DEMO_SIZE:-200M}"
cd "$demo"
sruns-stream archive "$demo/$run" --dest "$demo/archives"
gzip -t "archives/$run/$run.tar.gz"
mkdir extracted
tar -xzf "archives/$run/$run.tar.gz" -C extracted
diff -r "$run" "extracted/$run"
echo "demo: archive verified with gzip -t and GNU tar: $demo/archives/$run/$run.tar.gz"
sruns-stream status --journal "$demo/sruns.db"
