"""The checkpoint manager (FORMAT.md section 12): a series of checkpoints in
one directory under one prefix, pruned by a retention policy, resumed from
the newest good one. The layout on disk is every language's, so a run saved
from Python is managed and resumed from Rust, C, C++ or Go and back:

- ``D/P_checkpoint_{ts}.zip`` (``-{n}`` when the name is taken): the
  checkpoints, each with a manager block (FORMAT.md 11.4);
- ``D/.P.manager.json``: ``{"id": ..., "pinned": [file names]}``, replaced
  atomically;
- ``D/.P.lock``: the file a live manager holds an exclusive ``flock`` on.

``D`` may be an ``s3://bucket/prefix`` URL: the same layout on object
storage, with a lock object and conditional writes in place of ``flock``
and ``rename`` (``_series_store.py``).
"""

from __future__ import annotations

import builtins
import json
import math
import os
import re
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from . import _storage as storage
from ._errors import (
    ArgumentTypeError,
    CheckpointSkippedWarning,
    FormatError,
    InvalidArgumentError,
    MetadataError,
    UsageError,
)
from ._format import CheckpointReader
from ._format.metadata import ManagerRecord
from ._format.writer import _encode_metadata as encode_metadata
from ._retention import Candidate, Policy, decide, order_key
from ._series_store import DEFAULT_LEASE_SECONDS, LocalStore, ObjectStore, SeriesStore
from ._snapshot import Snapshots

if TYPE_CHECKING:
    from ._container import ModelContainer, ModelObjects, _Gathered

__all__ = ["AsyncSave", "CheckpointInfo", "CheckpointManager"]


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint of the manager's series, as its metadata describes it."""

    path: str
    step: int
    """The step given to the save (the manager block's)."""
    timestamp: int
    """The file's ``timestamp`` (Unix seconds)."""
    metrics: Mapping[str, float]
    """The numeric metadata of the save (the manager block's ``metrics``)."""
    kept_by: tuple[str, ...]
    """The retention rules that keep it (FORMAT.md 12.4): ``"latest"``,
    ``"pinned"``, ``"last"``, ``"best"``, ``"every"``, ``"all"``. Empty only
    for a checkpoint the next save's retention will delete (one that a
    manager with another policy wrote, or that a crash left before its
    retention ran)."""


def _positive(value: object, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be an int >= 1 or None, not {value!r}")
    if value < 1:
        raise InvalidArgumentError(f"{name} must be >= 1, not {value}")
    return value


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise ArgumentTypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if not prefix or "/" in prefix or "\0" in prefix or prefix.startswith("."):
        raise InvalidArgumentError(
            f"prefix {prefix!r} must be a non-empty file name stem without '/' that does not "
            "start with '.'"
        )
    return prefix


def _metrics(metadata: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among the save's metadata (bools are not numbers)."""
    out: dict[str, float] = {}
    for key, value in metadata.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int too large for a float
            finite = False
        if finite:
            out[key] = value
    return out


def _state_bytes(manager_id: str, pinned: list[str], extra: Mapping[str, Any]) -> bytes:
    state = {"id": manager_id, "pinned": pinned, **extra}
    return json.dumps(state, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"


class AsyncSave:
    """A save in the background (:meth:`CheckpointManager.save_async`)."""

    def __init__(self, thread: threading.Thread) -> None:
        self._thread = thread
        self._path: str | None = None
        self._error: BaseException | None = None
        self._collected = False

    def done(self) -> bool:
        """Whether the write has finished (committed or failed)."""
        return not self._thread.is_alive()

    def wait(self) -> str:
        """Wait for the write and its retention; return the path, or raise
        the error that stopped it."""
        self._thread.join()
        if self._error is not None:
            self._collected = True
            raise self._error
        assert self._path is not None
        return self._path

    @property
    def path(self) -> str | None:
        """The checkpoint's path once it is committed; None before, or when
        the write failed."""
        return None if self._thread.is_alive() else self._path


class CheckpointManager:
    """Keeps a series of checkpoints in ``directory`` under ``prefix``
    (FORMAT.md section 12), deletes those its retention policy no longer
    keeps, and resumes from the newest good one::

        with CheckpointManager("runs/a", keep_last=3, keep_best=1, metric="loss") as mgr:
            restored = mgr.restore_latest(container)          # None on a fresh run
            for step in range(start, steps):
                ...
                mgr.save_async(container, step, loss=loss)    # returns at once
            mgr.wait()

    Retention (FORMAT.md 12.4) keeps the newest checkpoint always, the
    pinned ones (:meth:`pin`), and: the ``keep_last`` newest; the
    ``keep_best`` with the best value of ``metric`` (``mode`` ``"min"`` or
    ``"max"``; ties go to the newer); those whose step is a multiple of
    ``keep_every_steps``; every one when none of the three is set.
    "Newest" orders by step, then timestamp, then file name.

    Opening creates ``directory`` (only here: a directory removed later
    makes saves fail) and takes an exclusive ``flock`` on
    ``directory/.{prefix}.lock``, held until :meth:`close` (or the process
    ends): a second manager of the same directory and prefix, in this
    process or another, raises :class:`ManagerLockedError`. The series'
    id is read from ``directory/.{prefix}.manager.json``, created on the
    first open. Only checkpoints of the series (named
    ``{prefix}_checkpoint_{ts}[-{n}].zip`` with this id in their manager
    block) are listed, deleted or resumed from; no other file is touched.

    ``directory`` may be an ``s3://bucket/prefix`` URL (the ``s3`` extra;
    README, "Object storage"): the same layout as objects, the lock an
    object with a lease of ``lock_lease_seconds`` (900 by default) that
    each save renews and that another manager may take over once it
    expired (``_series_store.py``). A lock lost that way makes the next
    save fail before it uploads anything.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        prefix: str = "checkpoint",
        keep_last: int | None = None,
        keep_best: int | None = None,
        metric: str | None = None,
        mode: Literal["min", "max"] = "min",
        keep_every_steps: int | None = None,
        *,
        lock_lease_seconds: int = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self._prefix = _check_prefix(prefix)
        keep_last = _positive(keep_last, "keep_last")
        keep_best = _positive(keep_best, "keep_best")
        keep_every_steps = _positive(keep_every_steps, "keep_every_steps")
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ArgumentTypeError(f"metric must be a non-empty str or None, not {metric!r}")
        if keep_best is not None and metric is None:
            raise InvalidArgumentError("keep_best needs metric: the metadata key to rank by")
        if mode not in ("min", "max"):
            raise InvalidArgumentError(f"mode must be 'min' or 'max', not {mode!r}")
        self._policy = Policy(keep_last, keep_best, metric, mode, keep_every_steps)
        lease = _positive(lock_lease_seconds, "lock_lease_seconds")
        assert lease is not None
        self._pattern = re.compile(
            rf"{re.escape(self._prefix)}_checkpoint_[0-9]+(?:-[0-9]+)?\.zip", re.ASCII
        )
        self._mutex = threading.Lock()
        self._snapshots = Snapshots()
        self._in_flight: AsyncSave | None = None
        location = storage.parse(directory)
        self._store: SeriesStore = (
            LocalStore(location, self._prefix)
            if isinstance(location, str)
            else ObjectStore(location, self._prefix, lease)
        )
        self._directory = self._store.directory
        self._store.take_lock()
        try:
            self._id, self._pinned, self._state_extra = self._read_or_create_state()
        except BaseException:
            self._release_lock()
            raise

    # -- opening and closing -------------------------------------------------

    def _release_lock(self) -> None:
        self._store.release_lock()

    def _read_or_create_state(self) -> tuple[str, list[str], dict[str, Any]]:
        path = self._store.state_name
        raw = self._store.read_state()
        if raw is None:
            manager_id = str(uuid.uuid4())
            if self._store.create_state(_state_bytes(manager_id, [], {})):
                return manager_id, [], {}
            # Another manager created it first (object storage): read it.
            raw = self._store.read_state()
            if raw is None:
                raise FormatError(f"{path}: created by another manager, then removed", kind="Io")
        try:
            state = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{path}: not UTF-8 JSON: {e}", kind="Json") from None
        if not isinstance(state, dict):
            raise FormatError(f"{path}: must be a JSON object", kind="Schema")
        found_id: object = state.get("id")
        if not isinstance(found_id, str) or not found_id:
            raise FormatError(f'{path}: "id" must be a non-empty string', kind="Schema")
        pinned = state.get("pinned", [])
        if not isinstance(pinned, list) or not all(isinstance(p, str) for p in pinned):
            raise FormatError(f'{path}: "pinned" must be a list of file names', kind="Schema")
        extra = {k: v for k, v in state.items() if k not in ("id", "pinned")}
        return found_id, list(pinned), extra

    def _write_state(self, manager_id: str, pinned: list[str], extra: Mapping[str, Any]) -> None:
        """Replaces the state (atomically in a directory: a rename)."""
        self._store.write_state(_state_bytes(manager_id, pinned, extra))

    def close(self) -> None:
        """Wait for a save in flight, then release the lock. Raises the
        error of a background save that :meth:`wait` did not collect (after
        releasing the lock). Closing twice does nothing."""
        if not self._store.locked:
            return
        try:
            self._settle(raise_error=True)
        finally:
            self._release_lock()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None and store.locked:
            in_flight = self._in_flight
            if in_flight is not None:
                in_flight._thread.join()
            self._release_lock()

    def __repr__(self) -> str:
        state = "open" if self._store.locked else "closed"
        return (
            f"CheckpointManager({self._directory!r}, prefix={self._prefix!r}, "
            f"id={self._id!r}, {state})"
        )

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def id(self) -> str:
        """The series' id (``.{prefix}.manager.json``), in every checkpoint's
        manager block."""
        return self._id

    @property
    def policy(self) -> Policy:
        return self._policy

    def _check_open(self) -> None:
        if not self._store.locked:
            raise UsageError(
                f"the checkpoint manager of {self._directory!r}, prefix {self._prefix!r}, is closed"
            )

    # -- saving ----------------------------------------------------------------

    def _settle(self, *, raise_error: bool) -> None:
        """Wait for the save in flight; raise its error if no one collected
        it (``raise_error``)."""
        in_flight = self._in_flight
        if in_flight is None:
            return
        in_flight._thread.join()
        self._in_flight = None
        if raise_error and in_flight._error is not None and not in_flight._collected:
            in_flight._collected = True
            raise in_flight._error

    def _gather(
        self, container: ModelContainer, step: int, metadata: Mapping[str, Any]
    ) -> _Gathered:
        from ._container import ModelContainer, _distributed_model

        self._check_open()
        if not isinstance(container, ModelContainer):
            raise ArgumentTypeError(f"save needs a ModelContainer, not {type(container).__name__}")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ArgumentTypeError(f"step must be an int >= 0, not {step!r}")
        if step < 0:
            raise InvalidArgumentError(f"step must be >= 0, not {step}")
        if container.format_version != 2:
            raise InvalidArgumentError(
                "a checkpoint manager writes a manager block, which needs format version 2; the "
                f"container writes version {container.format_version}"
            )
        metrics = _metrics(metadata)
        metric = self._policy.metric
        if metric is not None and metric not in metrics:
            got = "missing" if metric not in metadata else f"{metadata[metric]!r}"
            raise MetadataError(
                f"the retention policy ranks by metric {metric!r}: every save needs it as a "
                f"finite number keyword argument ({metric}=...), got {got}"
            )
        if container.model is not None and _distributed_model(container.model):
            raise UsageError(
                "a checkpoint manager keeps single-file checkpoints; this container's model "
                "has distributed parameters: save it with container.save (a sharded checkpoint)",
                kind="Usage",
            )
        self._store.check_exists()
        record = ManagerRecord(self._id, step, metrics)
        return container._gathered("checkpoint", metadata, manager=record)

    def _commit(self, gathered: _Gathered) -> str:
        # On object storage: renew the lease, or fail before uploading.
        self._store.refresh_lock()
        path = gathered.write(self._directory, self._prefix)
        self._apply_retention()
        return path

    def save(self, container: ModelContainer, step: int, **metadata: Any) -> str:
        """Save ``container`` as a checkpoint of the series at ``step`` (an
        int >= 0) with ``metadata`` (as :meth:`ModelContainer.save`; its
        finite numbers are the checkpoint's metrics), then delete the
        checkpoints the retention policy no longer keeps; return the path.

        A save in the background is waited for first, and its error raised
        if :meth:`wait` did not collect it. The policy's ``metric`` must be
        among ``metadata`` as a finite number (:class:`MetadataError`,
        nothing written). A directory that disappeared after the manager
        was opened is not created again (``FileNotFoundError``).

        The container's progress callback (:attr:`ModelContainer.progress`)
        hears the write, as for :meth:`ModelContainer.save`."""
        self._check_open()
        self._settle(raise_error=True)
        return self._commit(self._gather(container, step, metadata))

    def save_async(self, container: ModelContainer, step: int, **metadata: Any) -> AsyncSave:
        """As :meth:`save`, in the background: the state of the container
        (model, optimizer, scheduler, tracked objects) is copied now, into
        buffers reused from one save to the next, and a thread writes it
        and then applies retention; training may go on at once. Returns a
        handle (``wait()``, ``done()``, ``path``).

        A save in flight is waited for first (and its uncollected error
        raised). An error of the background write is raised by
        ``handle.wait()`` or :meth:`wait`, or else by the next save.

        The container's progress callback (:attr:`ModelContainer.progress`,
        as it is at this call) hears the write from the writing thread,
        while training goes on: it must be safe to call from another thread.
        An exception it raises ends the write, with no file written, and is
        raised as the write's error."""
        self._check_open()
        self._settle(raise_error=True)
        gathered = self._gather(container, step, metadata)
        # What the writer would refuse in the metadata is refused here.
        encode_metadata(gathered.metadata)
        from ._container import _Gathered

        snapshot = _Gathered(
            gathered.metadata,
            self._snapshots.copy("model", gathered.model) or {},
            self._snapshots.copy("optimizer", gathered.optimizer),
            self._snapshots.copy("extra", gathered.extra),
            gathered.progress,
        )
        handle: AsyncSave

        def write() -> None:
            try:
                handle._path = self._commit(snapshot)
            except BaseException as e:  # raised by wait() or the next save
                handle._error = e

        thread = threading.Thread(target=write, name=f"pytorch_saver save {self._prefix}")
        handle = AsyncSave(thread)
        self._in_flight = handle
        thread.start()
        return handle

    def wait(self) -> str | None:
        """Wait for the save in flight, if any, and return its path; raise
        its error. Returns None when there is none in flight."""
        in_flight = self._in_flight
        if in_flight is None:
            return None
        self._in_flight = None
        return in_flight.wait()

    # -- the series ------------------------------------------------------------

    def _scan(self) -> tuple[list[Candidate], dict[str, FormatError | OSError]]:
        """The checkpoints of the series (metadata only), and the files that
        have the series' names but could not be read, with why."""
        candidates: list[Candidate] = []
        unreadable: dict[str, FormatError | OSError] = {}
        pinned = set(self._pinned)
        for name in self._store.names():
            if not self._pattern.fullmatch(name):
                continue
            path = self._store.join(name)
            try:
                # On object storage: ranged reads of the structure and
                # metadata.json, not the whole object.
                with CheckpointReader(path, verify=False, metadata_only=True) as reader:
                    metadata = reader.scan.metadata
            except (FormatError, OSError) as e:
                unreadable[name] = e
                continue
            record = metadata.internals.manager
            if record is None or record.id != self._id:
                continue
            candidates.append(
                Candidate(
                    name, record.step, metadata.timestamp, dict(record.metrics), name in pinned
                )
            )
        return candidates, unreadable

    def _infos(self, candidates: list[Candidate]) -> list[CheckpointInfo]:
        kept = decide(candidates, self._policy)
        infos = [
            CheckpointInfo(self._store.join(c.name), c.step, c.timestamp, c.metrics, rules)
            for c, rules in zip(candidates, kept, strict=True)
        ]
        order = sorted(range(len(candidates)), key=lambda i: order_key(candidates[i]))
        return [infos[i] for i in order]

    def _apply_retention(self) -> None:
        with self._mutex:
            candidates, _ = self._scan()
            kept = decide(candidates, self._policy)
            removed = False
            for c, rules in zip(candidates, kept, strict=True):
                if not rules and self._store.delete(c.name):
                    removed = True
            if removed:
                self._store.deleted()

    def list(self) -> list[CheckpointInfo]:
        """The series' checkpoints, oldest first, read from their metadata
        only (files that cannot be read are not listed), each with the
        retention rules that keep it."""
        self._check_open()
        with self._mutex:
            candidates, _ = self._scan()
        return self._infos(candidates)

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint of the series (by step, then timestamp,
        then file name), or None."""
        infos = self.list()
        return infos[-1] if infos else None

    def best(self) -> CheckpointInfo | None:
        """The checkpoint with the best value of the policy's metric (ties
        go to the newer), or None when none has it. :class:`UsageError`
        when the manager has no metric."""
        metric = self._policy.metric
        if metric is None:
            raise UsageError("best() ranks by the manager's metric: open it with metric=...")
        scored = [i for i in self.list() if metric in i.metrics]
        if not scored:
            return None
        sign = 1.0 if self._policy.mode == "min" else -1.0
        # list() is oldest first: among equal values the last (newest) wins.
        return min(reversed(scored), key=lambda i: sign * float(i.metrics[metric]))

    def _series_name(self, path: str | os.PathLike[str]) -> str:
        return self._store.series_name(storage.normalize(path))

    def pin(self, path: str | os.PathLike[str]) -> None:
        """Keep the checkpoint ``path`` (of the series) whatever the policy,
        until :meth:`unpin`; recorded in ``.{prefix}.manager.json``."""
        self._check_open()
        name = self._series_name(path)
        with self._mutex:
            candidates, _ = self._scan()
            if name not in {c.name for c in candidates}:
                raise InvalidArgumentError(
                    f"{os.fspath(path)} is not a checkpoint of the series {self._id} in "
                    f"{self._directory!r} (prefix {self._prefix!r})"
                )
            if name not in self._pinned:
                pinned = [*self._pinned, name]
                self._write_state(self._id, pinned, self._state_extra)
                self._pinned = pinned

    def unpin(self, path: str | os.PathLike[str]) -> None:
        """Stop pinning ``path``; retention may delete it at the next save.
        Nothing happens if it was not pinned."""
        self._check_open()
        name = self._series_name(path)
        with self._mutex:
            if name in self._pinned:
                pinned = [p for p in self._pinned if p != name]
                self._write_state(self._id, pinned, self._state_extra)
                self._pinned = pinned

    @property
    def pinned(self) -> builtins.list[str]:
        """The file names pinned."""
        return list(self._pinned)

    # -- resuming --------------------------------------------------------------

    def _resume(self, attempt: Callable[[str], Any]) -> Any:
        """``attempt(path)`` on the checkpoints newest first until one
        succeeds; a file that fails verification (or cannot be read) is
        skipped with a :class:`CheckpointSkippedWarning`. None when the
        series has no checkpoint; when it has some and none loads, the
        newest one's error (FORMAT.md 12.5: a run must not silently start
        over)."""
        self._check_open()
        self._settle(raise_error=False)
        with self._mutex:
            candidates, unreadable = self._scan()
        for name, error in unreadable.items():
            path = self._store.join(name)
            warnings.warn(
                f"skipped {path}: it cannot be read ({type(error).__name__}: {error})",
                CheckpointSkippedWarning,
                stacklevel=3,
            )
        newest_error: FormatError | OSError | None = None
        for info in reversed(self._infos(candidates)):
            try:
                return attempt(info.path)
            except (FormatError, OSError) as e:
                newest_error = newest_error or e
                warnings.warn(
                    f"skipped {info.path}: {type(e).__name__}: {e}",
                    CheckpointSkippedWarning,
                    stacklevel=3,
                )
        if newest_error is None and unreadable:
            newest_error = next(iter(unreadable.values()))
        if newest_error is not None:
            raise newest_error
        return None

    def load_latest(
        self, *load_args: Any, **load_kwargs: Any
    ) -> tuple[dict[str, Any], ModelObjects] | None:
        """``ModelContainer().load(path, *load_args, **load_kwargs)`` of the
        newest checkpoint that loads, or None when the series has none (when
        it has some and none loads, the newest one's error). Each is
        fully verified; one that fails (damaged, truncated) is skipped with
        a :class:`CheckpointSkippedWarning` naming it and the error. Errors
        that are not the file's fault (a class that cannot be resolved, a
        state that does not fit) are raised."""
        from ._container import ModelContainer

        result: tuple[dict[str, Any], ModelObjects] | None = self._resume(
            lambda path: ModelContainer().load(path, *load_args, **load_kwargs)
        )
        return result

    def restore_latest(
        self, container: ModelContainer, **restore_kwargs: Any
    ) -> dict[str, Any] | None:
        """``container.restore(path)`` (tracked objects included) from the
        newest checkpoint that restores; the metadata, or None when there is
        none. Damaged files are skipped as by :meth:`load_latest`."""
        result: dict[str, Any] | None = self._resume(
            lambda path: container.restore(path, **restore_kwargs)
        )
        return result
