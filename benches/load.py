"""Loads of a 1 GiB checkpoint, side by side in one run.

The state dict of ``pytorch_saver.models.MLP(in_dim=8192, hidden_dim=8192,
n_classes=8192, n_layers=3)`` (fp32, 8 tensors) is loaded by PyTorch's own
means (the anchors: torch.load with mmap, safetensors, DCP, a raw readinto of
the same bytes) and by pytorch-saver (Rust through the C ABI, benches/
load_capi.rs, and the Python package), fresh and into existing objects. Every
run is a fresh child process: the files are in the page cache (read once
before each run), every load is followed by reading one float of every 4 KiB
page of every parameter (as a user touching the weights), and the child
reports the time of load plus touch, its VmRSS right before the load and its
VmHWM after (reset with /proc/self/clear_refs). Building the model is timed
where the user pays it (a fresh load), not where the model exists already.
Then four processes load the same file zero-copy and their summed PSS is
compared with the model's size.

    cargo bench --bench load_capi [-- --runs N] [-- --dir DIR]
    .venv/bin/python benches/load.py [--runs N] [--dir DIR] [--capi PATH]

Without ``--capi`` the Rust binary is built with cargo. The files go into a
temporary directory under ``--dir`` (default target/bench-data), removed at
the end. Prints medians, ratios and met/MISSED verdicts; asserts nothing.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# PTS_LOAD_BENCH_DIM (default 8192) shrinks the model for a quick trial of
# the benchmark itself; load_capi reads it too.
DIM = int(os.environ.get("PTS_LOAD_BENCH_DIM", "8192"))
KWARGS = {"in_dim": DIM, "hidden_dim": DIM, "n_classes": DIM, "n_layers": 3}
MODEL_BYTES = 4 * 4 * (DIM * DIM + DIM)  # four Linear layers, fp32
MIB = 1 << 20
RSS_SLACK = 64 * MIB
CHILD_TIMEOUT = 900


# --------------------------------------------------------------------------
# Child side: one load per process.


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _touch(model: Any) -> float:
    """One float of every 4 KiB page of every parameter (and the last one);
    the sum of their absolute values, to compare runs."""
    total = 0.0
    for p in model.parameters():
        v = p.detach().reshape(-1)
        total += float(v[::1024].double().abs().sum()) + abs(float(v[-1]))
    return total


def _meta_model() -> Any:
    import torch
    from pytorch_saver.models import MLP

    with torch.device("meta"):
        return MLP(**KWARGS)


def _existing_model() -> Any:
    """A model with its parameters allocated and written (resident), as a
    user's model is before a load into it."""
    import torch

    model = _meta_model().to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    return model


def _readinto(path: str, model: Any) -> Any:
    with open(path, "rb", buffering=0) as f:
        for t in model.state_dict().values():
            view = memoryview(t.numpy()).cast("B")
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise EOFError(path)
                done += n
    return model


def _container() -> Any:
    from pytorch_saver import ModelContainer
    from pytorch_saver.models import MLP

    c = ModelContainer()
    c.initialize(MLP, KWARGS)
    return c


# name -> (setup, timed): setup(files) runs before the baseline, untimed;
# timed(state, files) returns the model to touch.
Setup = Callable[[dict[str, str]], Any]
Timed = Callable[[Any, dict[str, str]], Any]


def _none(files: dict[str, str]) -> None:
    return None


def _existing(files: dict[str, str]) -> Any:
    return _existing_model()


def _torch_meta(_: Any, files: dict[str, str]) -> Any:
    import torch

    model = _meta_model()
    sd = torch.load(files["torch"], mmap=True, weights_only=True)
    model.load_state_dict(sd, assign=True)
    return model


def _st_meta(_: Any, files: dict[str, str]) -> Any:
    from safetensors.torch import load_file

    model = _meta_model()
    model.load_state_dict(load_file(files["safetensors"]), assign=True)
    return model


def _torch_existing(model: Any, files: dict[str, str]) -> Any:
    import torch

    model.load_state_dict(torch.load(files["torch"], mmap=True, weights_only=True))
    return model


def _st_existing(model: Any, files: dict[str, str]) -> Any:
    from safetensors.torch import load_model

    load_model(model, files["safetensors"])
    return model


def _dcp_existing(model: Any, files: dict[str, str]) -> Any:
    import torch.distributed.checkpoint as dcp

    dcp.load(model.state_dict(), checkpoint_id=files["dcp"])
    return model


def _py_load(verify: bool) -> Timed:
    def timed(_: Any, files: dict[str, str]) -> Any:
        from pytorch_saver import ModelContainer

        if verify:
            _, objs = ModelContainer().load(files["ours"])
        else:
            _, objs = ModelContainer().load(files["ours"], verify=False)
        return objs.model

    return timed


def _py_restore(verify: bool) -> Timed:
    def timed(c: Any, files: dict[str, str]) -> Any:
        if verify:
            c.restore(files["ours"])
        else:
            c.restore(files["ours"], verify=False)
        return c.model

    return timed


PY_CHILDREN: dict[str, tuple[Setup, Timed]] = {
    "torch-meta": (_none, _torch_meta),
    "st-meta": (_none, _st_meta),
    "raw": (_existing, lambda m, files: _readinto(files["raw"], m)),
    "torch-existing": (_existing, _torch_existing),
    "st-existing": (_existing, _st_existing),
    "dcp-existing": (_existing, _dcp_existing),
    "py-load": (_none, _py_load(True)),
    "py-load-noverify": (_none, _py_load(False)),
    "py-restore": (lambda files: _container(), _py_restore(True)),
    "py-restore-noverify": (lambda files: _container(), _py_restore(False)),
}


def _child(name: str, files: dict[str, str]) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import pytorch_saver  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch

    if name == "dcp-existing":
        import torch.distributed.checkpoint  # noqa: F401
    torch.ones(16).sum()
    setup, timed = PY_CHILDREN[name]
    state = setup(files)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    model = timed(state, files)
    check = _touch(model)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    print(json.dumps({"seconds": seconds, "base_kib": base, "peak_kib": peak, "check": check}))


def _pss_child(path: str) -> None:
    import torch
    from pytorch_saver import ModelContainer

    torch.ones(16).sum()
    print("ready", flush=True)
    sys.stdin.readline()
    _, objs = ModelContainer().load(path)
    print(f"loaded {_touch(objs.model)}", flush=True)
    sys.stdin.readline()


def _probe() -> None:
    """What this venv's packages offer, as JSON."""
    import pytorch_saver
    import torch
    from pytorch_saver import ModelContainer

    load = inspect.signature(ModelContainer.load).parameters
    restore = getattr(ModelContainer, "restore", None)
    restore_params = inspect.signature(restore).parameters if restore else {}
    try:
        from pytorch_saver import _crc

        crc = str(_crc.IMPLEMENTATION)
    except ImportError:
        crc = "zlib (no pytorch_saver._crc)"
    try:
        import torch.distributed.checkpoint  # noqa: F401

        dcp = True
    except ImportError:
        dcp = False
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "package": str(Path(pytorch_saver.__file__).parent),
                "load_verify": "verify" in load,
                "restore": restore is not None,
                "restore_verify": "verify" in restore_params,
                "crc": crc,
                "dcp": dcp,
            }
        )
    )


def _make(out: str) -> None:
    """Writes the files, all from one state dict; prints their paths."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    c = _container()
    sd = c.model.state_dict()
    d = Path(out)
    files = {"ours": c.save(out, "bench")}
    torch.save(sd, d / "model.pt")
    files["torch"] = str(d / "model.pt")
    save_file(sd, str(d / "model.safetensors"))
    files["safetensors"] = str(d / "model.safetensors")
    with open(d / "model.raw", "wb") as f:
        for t in sd.values():
            f.write(memoryview(t.numpy()).cast("B"))
    files["raw"] = str(d / "model.raw")
    try:
        import torch.distributed.checkpoint as dcp

        dcp.save(sd, checkpoint_id=str(d / "dcp"))
        files["dcp"] = str(d / "dcp")
    except Exception as e:  # DCP is optional: its rows say why
        print(f"DCP save failed: {e!r}", file=sys.stderr)
    print(json.dumps(files))


# --------------------------------------------------------------------------
# Orchestrator.


class Contender:
    def __init__(
        self, key: str, label: str, anchor: bool, file: str, cmd: list[str] | None, why: str = ""
    ) -> None:
        self.key, self.label, self.anchor, self.file, self.cmd = key, label, anchor, file, cmd
        self.why = why  # why cmd is None
        self.seconds: list[float] = []
        self.rss: list[int] = []  # peak - baseline, bytes
        self.checks: list[float] = []
        self.error = ""

    def median(self) -> float | None:
        if not self.seconds:
            return None
        s = sorted(self.seconds)
        return s[len(s) // 2]


def _warm(path: str) -> None:
    """Reads a file (or every file of a directory) through the page cache."""
    paths = [Path(path)] if Path(path).is_file() else sorted(Path(path).rglob("*"))
    buf = bytearray(16 * MIB)
    for p in paths:
        if p.is_file():
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def _run_json(cmd: list[str]) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines() or [f"exit {out.returncode}"]
        raise RuntimeError(lines[-1][:150])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _find_capi() -> str:
    env = dict(os.environ, LIBTORCH_USE_PYTORCH="1")
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    out = subprocess.run(
        ["cargo", "bench", "--no-run", "--bench", "load_capi", "--message-format=json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if (
            msg.get("reason") == "compiler-artifact"
            and msg["target"]["name"] == "load_capi"
            and msg.get("executable")
        ):
            return str(msg["executable"])
    raise RuntimeError("cargo built no load_capi executable")


def _pss_kib(pid: int, path: str) -> tuple[int, int, int]:
    """A process's PSS in KiB: in all (smaps_rollup), of its anonymous
    memory, and of its mappings of ``path``."""
    total = anon = mapped = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                total = int(line.split()[1])
            elif line.startswith("Pss_Anon:"):
                anon = int(line.split()[1])
    current = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and not head[0].endswith(":"):
                current = head[5].strip() if len(head) > 5 else ""
            elif current == path and line.startswith("Pss:"):
                mapped += int(head[1])
    return total, anon, mapped


def _pss_group(cmd: list[str], path: str, n: int = 4) -> list[tuple[int, int, int]]:
    """Starts n processes, waits until each is ready, sums their PSS (see
    _pss_kib), lets them load and touch every page, sums it again once all
    n have loaded. Returns the (before, after) sums."""
    path = os.path.realpath(path)
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]

    def total() -> tuple[int, int, int]:
        each = [_pss_kib(p.pid, path) for p in procs]
        return (sum(e[0] for e in each), sum(e[1] for e in each), sum(e[2] for e in each))

    try:

        def expect(p: subprocess.Popen[str], word: str) -> None:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line.startswith(word):
                raise RuntimeError(f"child {p.pid} said {line!r}, expected {word!r}")

        def tell(p: subprocess.Popen[str]) -> None:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()

        for p in procs:
            expect(p, "ready")
        before = total()
        for p in procs:
            tell(p)
        for p in procs:
            expect(p, "loaded")
        after = total()
        for p in procs:
            tell(p)
        for p in procs:
            p.wait(timeout=120)
        return [before, after]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _fmt(x: float | None, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=str(ROOT / "target" / "bench-data"))
    ap.add_argument("--capi", help="the load_capi bench binary (default: built with cargo)")
    args = ap.parse_args()
    runs = max(1, args.runs)
    capi = args.capi or _find_capi()
    py = [sys.executable, str(Path(__file__).resolve())]
    probe = _run_json([*py, "--probe"])

    Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix="load-", dir=args.dir)
    try:
        _bench(py, capi, probe, work, runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            Path(args.dir).rmdir()  # only if nothing else is there
        except OSError:
            pass


def _bench(py: list[str], capi: str, probe: dict[str, Any], work: str, runs: int) -> None:
    t_start = time.perf_counter()
    files: dict[str, str] = _run_json([*py, "--make", work])
    files_json = json.dumps(files)

    def pyc(name: str) -> list[str]:
        return [*py, "--child", name, files_json]

    def rsc(mode: str) -> list[str]:
        return [capi, "--child", mode, files["ours"]]

    no_verify = "" if probe["load_verify"] else "not available (no verify= keyword)"
    no_restore = (
        "not available (no ModelContainer.restore)"
        if not probe["restore"]
        else ("" if probe["restore_verify"] else "not available (restore has no verify=)")
    )
    no_dcp = "" if "dcp" in files else "not available (DCP save failed)"
    # (key, label, anchor, file it reads, why it cannot run)
    table = [
        ("torch-meta", "torch.load(mmap) + assign, meta model", True, "torch", ""),
        ("st-meta", "safetensors load_file + assign, meta model", True, "safetensors", ""),
        ("raw", "raw readinto into existing tensors", True, "raw", ""),
        ("torch-existing", "torch load_state_dict(load(mmap)), existing", True, "torch", ""),
        ("st-existing", "safetensors load_model, existing", True, "safetensors", ""),
        ("dcp-existing", "DCP load into existing tensors", True, "dcp", no_dcp),
        ("c-load", "C  pts_container_load (verify)", False, "ours", ""),
        ("c-load-nv", "C  pts_container_load_ex (no verify)", False, "ours", ""),
        ("c-restore", "C  pts_container_restore (verify)", False, "ours", ""),
        ("c-restore-nv", "C  pts_container_restore_ex (no verify)", False, "ours", ""),
        ("py-load", "Py ModelContainer().load (verify)", False, "ours", ""),
        ("py-load-nv", "Py load(verify=False)", False, "ours", no_verify),
        ("py-restore", "Py restore (verify)", False, "ours", no_restore),
        ("py-restore-nv", "Py restore(verify=False)", False, "ours", no_restore),
    ]
    rows = [Contender(k, label, a, f, None, why) for k, label, a, f, why in table]
    rust_modes = {
        "c-load": "load",
        "c-load-nv": "load-noverify",
        "c-restore": "restore",
        "c-restore-nv": "restore-noverify",
    }
    py_names = {"py-load-nv": "py-load-noverify", "py-restore-nv": "py-restore-noverify"}
    for c in rows:
        if c.key in rust_modes:
            c.cmd = rsc(rust_modes[c.key])
        elif not c.why:
            c.cmd = pyc(py_names.get(c.key, c.key))

    print(
        f"load of a {MODEL_BYTES / MIB:.1f} MiB fp32 state dict (MLP {DIM}/{DIM}/{DIM}, 3 layers, "
        f"8 tensors); torch {probe['torch']}; Python package {probe['package']}, "
        f"CRC {probe['crc']}"
    )
    print(
        f"{runs} runs per contender, median; each run a fresh process; files in the page cache; "
        "every load followed by one float read per 4 KiB page of every parameter"
    )
    for r in range(runs):
        for c in rows:
            if c.cmd is None or c.error:
                continue
            _warm(files[c.file])
            try:
                res = _run_json(c.cmd)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
                c.error = f"failed: {e}"
                continue
            c.seconds.append(float(res["seconds"]))
            c.rss.append((int(res["peak_kib"]) - int(res["base_kib"])) * 1024)
            c.checks.append(float(res["check"]))
        print(f"  round {r + 1}/{runs} done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    by = {c.key: c for c in rows}
    raw = by["raw"].median()
    anchors = [(c.median(), c) for c in rows if c.anchor and c.median() is not None]
    fastest = min(anchors, key=lambda a: a[0]) if anchors else None
    fast_s = fastest[0] if fastest else None
    torch_existing = by["torch-existing"].median()
    rss_cap = MODEL_BYTES + RSS_SLACK

    def ratio(x: float | None, ref: float | None) -> float | None:
        return None if x is None or not ref else x / ref

    # Targets: (row key, description, reference median, limit as a ratio)
    goals = [
        (("c-load", "py-load"), "verified fresh load <= 1x raw readinto", raw, 1.0),
        (("c-load-nv", "py-load-nv"), "unverified fresh load <= 2x fastest anchor", fast_s, 2.0),
        (("c-restore", "py-restore"), "verified restore <= 1x raw readinto", raw, 1.0),
        (
            ("c-restore-nv", "py-restore-nv"),
            "unverified restore <= 1.2x torch load_state_dict existing",
            torch_existing,
            1.2,
        ),
    ]
    targets = [
        (key, desc, ratio(by[key].median(), ref), limit)
        for keys, desc, ref, limit in goals
        for key in keys
    ]
    row_verdicts: dict[str, list[str]] = {c.key: [] for c in rows}
    for key, _, r, limit in targets:
        if r is not None:
            row_verdicts[key].append(f"time {_verdict(r <= limit)}")

    print()
    head = (
        f"{'contender':<46} {'median s':>9} {'vs raw':>8} {'vs fastest':>10} "
        f"{'peak-base MiB':>14}  targets"
    )
    print(head)
    print("-" * len(head))
    for c in rows:
        if c.key == "c-load":
            print("ours")
        elif c.key == "torch-meta":
            print("anchors")
        if c.cmd is None or (c.error and not c.seconds):
            print(f"{c.label:<46} {c.why or c.error}")
            continue
        m = c.median()
        peak = max(c.rss) if c.rss else None
        verdicts = list(row_verdicts[c.key])
        if not c.anchor and peak is not None:
            verdicts.append(f"RSS {_verdict(peak <= rss_cap)}")
        note = f" ({c.error}, {len(c.seconds)} runs)" if c.error else ""
        peak_mib = None if peak is None else peak / MIB
        print(
            f"{c.label:<46} {_fmt(m, '9.3f')} {_fmt(ratio(m, raw), '7.2f')}x "
            f"{_fmt(ratio(m, fast_s), '9.2f')}x {_fmt(peak_mib, '14.1f')}"
            f"  {', '.join(verdicts)}{note}"
        )
    print()
    fastest_label = fastest[1].label if fastest else "none"
    print(f"fastest anchor: {fastest_label}; peak-base is the largest over the runs")
    refs = [x for c in rows for x in c.checks]
    if refs:
        ref = by["raw"].checks[0] if by["raw"].checks else refs[0]
        odd = [
            c.label for c in rows if any(abs(x - ref) > 1e-6 * max(abs(ref), 1.0) for x in c.checks)
        ]
        print(
            "floats read: the same in every run of every contender"
            if not odd
            else f"floats read DIFFER from the raw read's in: {', '.join(odd)}"
        )

    print()
    print("targets")
    for key, desc, r, limit in targets:
        who = "C ABI " if key.startswith("c-") else "Python"
        if by[key].cmd is None or r is None:
            state = by[key].why or by[key].error or "no figure"
            print(f"  {who}  {desc:<58} {state}")
        else:
            print(f"  {who}  {desc:<58} {r:6.2f}x  {_verdict(r <= limit)}")
    for who, keys in (
        ("C ABI ", ("c-load", "c-load-nv", "c-restore", "c-restore-nv")),
        ("Python", ("py-load", "py-load-nv", "py-restore", "py-restore-nv")),
    ):
        peaks = [max(by[k].rss) for k in keys if by[k].rss]
        if peaks:
            worst = max(peaks)
            print(
                f"  {who}  {'peak RSS during a load <= model + 64 MiB above baseline':<58} "
                f"{worst / MIB:6.1f} MiB (cap {rss_cap / MIB:.1f})  {_verdict(worst <= rss_cap)}"
            )

    print()
    print(
        "shared page cache: 4 processes load the same file zero-copy, touch every page, "
        "and wait for each other"
    )
    print(
        f"  {'':<8} {'PSS before MiB':>15} {'PSS after MiB':>14} {'growth MiB':>11} "
        f"{'cap MiB':>9}  {'':<6}  {'anon growth':>11} {'file mapped':>11}"
    )
    cap = 1.2 * MODEL_BYTES
    for who, cmd in (
        ("Python", [*py, "--pss-child", files["ours"]]),
        ("C ABI", [capi, "--pss-child", files["ours"]]),
    ):
        _warm(files["ours"])
        try:
            before, after = _pss_group(cmd, files["ours"])
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            print(f"  {who:<8} failed: {e}")
            continue
        growth = (after[0] - before[0]) * 1024
        print(
            f"  {who:<8} {before[0] / 1024:15.1f} {after[0] / 1024:14.1f} {growth / MIB:11.1f} "
            f"{cap / MIB:9.1f}  {_verdict(growth <= cap):<6}  "
            f"{(after[1] - before[1]) / 1024:11.1f} {after[2] / 1024:11.1f}"
        )
    print(
        "  (anon growth: of the anonymous PSS; file mapped: PSS of the four processes' "
        "mappings of the checkpoint; PSS of shared libraries moves as other processes start "
        "and exit)"
    )
    print(f"(total {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], json.loads(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--pss-child":
        _pss_child(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--probe":
        _probe()
    elif len(sys.argv) > 1 and sys.argv[1] == "--make":
        _make(sys.argv[2])
    else:
        main()
