"""The Python half of tests/differential.rs: reads every file it is given
with pytorch_saver.read_checkpoint, in this one process, and prints, per
file, "ok" or the kind of the error it raised (docs/FORMAT.md section 9).
Anything that is not a deliberate pytorch_saver error is reported as
"crash:<type>: <message>", which the Rust side counts as a disagreement.

Input (stdin, JSON): {"dir": DIR, "files": [NAME, ...]}.
Output (stdout, JSON): [KIND, ...] in the order of "files"."""

import json
import sys
from pathlib import Path

import pytorch_saver


def kind_of(path: Path) -> str:
    try:
        pytorch_saver.read_checkpoint(path)
    except pytorch_saver.PytorchSaverError as e:
        return str(e.kind)
    except Exception as e:  # noqa: BLE001 - every other failure is a finding
        return f"crash:{type(e).__name__}: {e}"
    return "ok"


def main() -> None:
    spec = json.load(sys.stdin)
    root = Path(spec["dir"])
    json.dump([kind_of(root / name) for name in spec["files"]], sys.stdout)


if __name__ == "__main__":
    main()
