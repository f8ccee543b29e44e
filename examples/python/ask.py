"""The demo's last act, client side: POST the probe to the Go server and
check its answer against the outputs the served file records.

    .venv/bin/python examples/python/ask.py URL PROBE_JSON SERVED_FILE

Exits 1 when the server's outputs differ from the recorded ones by more
than 1e-6.
"""

from __future__ import annotations

import json
import struct
import sys
import urllib.request

from pytorch_saver import read_checkpoint

CLASSES = ["horizontal", "vertical", "diagonal"]


def f32(value: float) -> float:
    """``value`` rounded to float32, as the model computed it (JSON numbers
    are printed shortest for their own precision)."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def main() -> int:
    url, probe_json, served = sys.argv[1:4]
    body = open(probe_json, "rb").read()
    request = urllib.request.Request(
        f"{url}/predict", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    print("Go: outputs on the probe")
    for row, best in zip(answer["outputs"], answer["predictions"], strict=True):
        values = " ".join(f"{v:+.6f}" for v in row)
        print(f"  [{values}] -> {CLASSES[best]}")
    recorded = [f32(v) for v in read_checkpoint(served).metadata["probe_outputs"]]
    got = [f32(v) for row in answer["outputs"] for v in row]
    worst = max(abs(a - b) for a, b in zip(got, recorded, strict=False)) if got else float("inf")
    same = len(got) == len(recorded) and worst <= 1e-6
    verdict = "the same as" if same else "DIFFERENT FROM"
    print(f"Go: {verdict} Rust's after resuming (largest difference {worst:.0e})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
