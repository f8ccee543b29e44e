#!/usr/bin/env bash
# The whole story in one run (`make demo` builds everything first):
#   1. Python trains a portable conv net (pytorch_saver.models.Sequential)
#      with Adam and a cosine schedule, and saves a checkpoint;
#   2. the command-line tool inspects and verifies the file;
#   3. Rust loads it with no model code, gets Python's outputs, resumes
#      training and saves an inference file;
#   4. a Go HTTP server serves that file, and its answers are Rust's.
# Each step checks the outputs against those recorded by the step before
# and the script fails if any differ.
set -euo pipefail
OUT=${1:-out/demo}
PY=.venv/bin/python
CLI=target/release/pytorch-saver
RESUME=target/release/examples/resume
SERVE=target/go/serve

rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1. Python: train and save (examples/python/train.py)"
$PY examples/python/train.py "$OUT" | tee "$OUT/train.log"
checkpoint=$(tail -n 1 "$OUT/train.log")

echo
echo "== 2. The command line: pytorch-saver inspect, verify"
$CLI inspect "$checkpoint" | sed -n '1,8p'
$CLI verify "$checkpoint"

echo
echo "== 3. Rust: load with no model code, resume, save (examples/resume.rs)"
$RESUME "$checkpoint" "$OUT/probe.json" "$OUT" | tee "$OUT/resume.log"
served=$(tail -n 1 "$OUT/resume.log")

echo
echo "== 4. Go: serve the inference file over HTTP (examples/go/serve)"
$SERVE -checkpoint "$served" -addr 127.0.0.1:0 -input-shape 1,8,8 >"$OUT/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$OUT/serve.log" && break
  kill -0 $server 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }
  sleep 0.1
done
url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$OUT/serve.log" | head -n 1)
echo "Go: $(sed -n 's/^serve: [0-9/]* [0-9:]* //p' "$OUT/serve.log" | head -n 2 | paste -sd ';' | sed 's/;/; /')"
$PY examples/python/ask.py "$url" "$OUT/probe.json" "$served"
kill -TERM $server
wait $server
trap - EXIT
echo
echo "The same model, the same numbers: trained in Python, resumed in Rust, served from Go."
