#!/usr/bin/env bash
# End-to-end check of `meta_train --resume`: a run killed part way (SIGKILL, no chance to
# clean up) and resumed must print the same held-out results and leave byte-identical
# checkpoints as the uninterrupted run.
#   scripts/check_resume.sh [extra meta_train flags, e.g. --quadratic-only]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example meta_train
bin=target/release/examples/meta_train
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
results() { grep -A5 'held-out' | grep -v '^plot'; }

"$bin" --out "$out/whole" "$@" 2>/dev/null | results > "$out/whole.txt"
# Killed after six seconds (in the image-MLP phase when it runs) (the first checkpoints are written by then), then resumed.
timeout -s KILL 6 "$bin" --out "$out/resumed" "$@" >/dev/null 2>&1 || true
ls "$out/resumed"/*.ckpt >/dev/null
"$bin" --out "$out/resumed" --resume "$@" 2>/dev/null | tee "$out/log.txt" | results > "$out/resumed.txt"
grep -h 'resumed from' "$out/log.txt" || true
diff "$out/whole.txt" "$out/resumed.txt"
for ck in "$out/whole"/*.ckpt; do
  cmp "$ck" "$out/resumed/$(basename "$ck")"
done
echo "resume check passed: same held-out losses, byte-identical checkpoints"
