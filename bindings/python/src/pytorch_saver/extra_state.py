"""Extra training state: everything besides the model, the optimizer and the
LR scheduler that a run needs to resume exactly (docs/FORMAT.md 11.3).

A container tracks named objects (``container.track("rng", RNG())``);
``save`` writes each one's state, ``load(path, track={...})`` and
``restore(path)`` put it back into the objects given. Trackable are:

- :class:`RNG`: the global random generators (torch's CPU generator and
  each CUDA device's, Python's ``random``, NumPy's global generator when
  NumPy is installed), recorded as ``pytorch_saver.RNG``;
- :class:`Counters`: named integers (``Counters(step=0, epoch=0)``),
  recorded as ``pytorch_saver.Counters``;
- a ``torch.Generator`` (``torch.Generator``: ``{"state": tensor}``);
- a ``torch.amp.GradScaler`` (``torch.amp.GradScaler``: its
  ``state_dict()``);
- any object with ``state_dict()`` and ``load_state_dict(state)``, recorded
  under its class's ``module.QualName``.

A state is stored as typed values (no pickle): its tensors go to the member
``extra.safetensors`` (named ``<entry>.<path>``, as ``rng.torch.cpu``),
everything else to ``metadata.json`` in the forms of FORMAT.md 11.2.
An entry is restored only into an object of the same recorded class.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator, Sequence
from typing import Any, Final

import torch

from ._errors import ArgumentTypeError, PytorchSaverError, StateMismatchError
from ._resolve import class_name

__all__ = ["Counters", "RNG"]

RNG_CLASS: Final = "pytorch_saver.RNG"
COUNTERS_CLASS: Final = "pytorch_saver.Counters"
GENERATOR_CLASS: Final = "torch.Generator"
GRAD_SCALER_CLASS: Final = "torch.amp.GradScaler"

_MT_WORDS: Final = 625  # random.getstate()'s tuple: 624 words and the position


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


class RNG:
    """The global random number generators, as one trackable object.

    ``state_dict()`` reads them now; ``load_state_dict(state)`` sets them:
    torch's CPU generator (``torch.get_rng_state``), each CUDA device's
    when CUDA is available, Python's ``random`` and NumPy's global generator
    (``numpy.random``, when NumPy is installed). Parts a file holds that
    this process lacks (CUDA without a GPU, NumPy not installed) are left
    alone; a file written without them (by Rust or C++) leaves them as they
    are. Its state is the layout of FORMAT.md 11.3::

        {"torch": {"cpu": uint8 tensor, "cuda": [uint8 tensor, ...]},
         "python": random.getstate(),
         "numpy": np.random.get_state(legacy=False), its key a list of ints}
    """

    def __repr__(self) -> str:
        return "RNG()"

    def state_dict(self) -> dict[str, Any]:
        torch_state: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            torch_state["cuda"] = list(torch.cuda.get_rng_state_all())
        state: dict[str, Any] = {"torch": torch_state, "python": random.getstate()}
        np = _numpy()
        if np is not None:
            saved = np.random.get_state(legacy=False)
            inner = dict(saved["state"])
            inner["key"] = [int(k) for k in inner["key"]]
            state["numpy"] = {**saved, "state": inner}
        return state

    def check_state_dict(self, state: Any) -> None:
        """:class:`StateMismatchError` unless ``state`` has the layout above;
        changes nothing."""
        if not isinstance(state, dict) or not set(state) <= {"torch", "python", "numpy"}:
            raise StateMismatchError(
                f"an RNG state is an object of torch, python and numpy, not {_brief(state)}"
            )
        torch_state = state.get("torch", {})
        if not isinstance(torch_state, dict) or not set(torch_state) <= {"cpu", "cuda"}:
            raise StateMismatchError("the RNG state's torch part is not {cpu, cuda}")
        if "cpu" in torch_state:
            _check_generator_state(torch_state["cpu"], torch.get_rng_state(), "torch.cpu")
        cuda = torch_state.get("cuda")
        if cuda is not None:
            if not isinstance(cuda, list):
                raise StateMismatchError("the RNG state's torch.cuda is not a list of tensors")
            if torch.cuda.is_available():
                if len(cuda) != torch.cuda.device_count():
                    raise StateMismatchError(
                        f"the RNG state holds {len(cuda)} CUDA generators, this process has "
                        f"{torch.cuda.device_count()} devices"
                    )
                for i, (saved, held) in enumerate(
                    zip(cuda, torch.cuda.get_rng_state_all(), strict=True)
                ):
                    _check_generator_state(saved, held, f"torch.cuda[{i}]")
        if "python" in state:
            _check_python_state(state["python"])
        if "numpy" in state and not isinstance(state["numpy"], dict):
            raise StateMismatchError("the RNG state's numpy part is not an object")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)
        torch_state = state.get("torch", {})
        if "cpu" in torch_state:
            torch.set_rng_state(torch_state["cpu"].clone())
        cuda = torch_state.get("cuda")
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.clone() for t in cuda])
        if "python" in state:
            version, words, gauss = state["python"]
            random.setstate((version, tuple(words), gauss))
        np = _numpy()
        if "numpy" in state and np is not None:
            saved = dict(state["numpy"])
            inner = dict(saved["state"])
            inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
            np.random.set_state({**saved, "state": inner})


def _brief(value: object) -> str:
    return f"{type(value).__name__} {value!r:.80}"


def _check_generator_state(saved: Any, held: torch.Tensor, where: str) -> None:
    if not isinstance(saved, torch.Tensor):
        raise StateMismatchError(f"the RNG state's {where} is not a tensor: {_brief(saved)}")
    if saved.dtype != torch.uint8 or saved.shape != held.shape:
        raise StateMismatchError(
            f"the RNG state's {where} is {saved.dtype} of shape {list(saved.shape)}, this torch's "
            f"generator state is {held.dtype} of shape {list(held.shape)}"
        )


def _check_python_state(state: Any) -> None:
    ok = (
        isinstance(state, tuple)
        and len(state) == 3
        and isinstance(state[0], int)
        and isinstance(state[1], (tuple, list))
        and len(state[1]) == _MT_WORDS
        and all(isinstance(w, int) and not isinstance(w, bool) for w in state[1])
        and (state[2] is None or isinstance(state[2], float))
    )
    if not ok:
        raise StateMismatchError(
            "the RNG state's python part is not random.getstate(): (version, 625 ints, gauss)"
        )


class Counters:
    """Named integers to save with a checkpoint (``step``, ``epoch``, ...),
    read and set as attributes::

        counters = container.track("counters", Counters(step=0, epoch=0))
        counters.step += 1

    Recorded as ``pytorch_saver.Counters`` with the state
    ``{"step": 30, "epoch": 2}``; loading replaces every counter with the
    file's.
    """

    __slots__ = ("_counts",)
    _counts: dict[str, int]

    def __init__(self, **counts: int) -> None:
        object.__setattr__(self, "_counts", {})
        for name, value in counts.items():
            setattr(self, name, value)

    def __getattr__(self, name: str) -> int:
        try:
            counts: dict[str, int] = object.__getattribute__(self, "_counts")
            return counts[name]
        except KeyError:
            raise AttributeError(f"Counters has no counter {name!r}") from None

    def __setattr__(self, name: str, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ArgumentTypeError(f"counter {name!r} must be an int, not {_brief(value)}")
        self._counts[name] = int(value)

    def __delattr__(self, name: str) -> None:
        if name not in self._counts:
            raise AttributeError(f"Counters has no counter {name!r}")
        del self._counts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counters):
            return NotImplemented
        return self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._counts.items())
        return f"Counters({inner})"

    def state_dict(self) -> dict[str, int]:
        return dict(self._counts)

    def check_state_dict(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in state.items()
        ):
            raise StateMismatchError(
                f"a Counters state is an object of integers, not {_brief(state)}"
            )

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.check_state_dict(state)
        self._counts.clear()
        self._counts.update(state)


# ---------------------------------------------------------------------------
# The container's side: what a tracked object is recorded as, its state, and
# restoring several objects all or nothing.


def recorded_class(obj: object) -> str:
    """The class name recorded for a tracked object; :class:`ArgumentTypeError`
    for an object that cannot be tracked."""
    if isinstance(obj, RNG):
        return RNG_CLASS
    if isinstance(obj, Counters):
        return COUNTERS_CLASS
    if isinstance(obj, torch.Generator):
        return GENERATOR_CLASS
    if isinstance(obj, torch.amp.GradScaler):
        return GRAD_SCALER_CLASS
    if isinstance(obj, type) or not (
        callable(getattr(obj, "state_dict", None))
        and callable(getattr(obj, "load_state_dict", None))
    ):
        raise ArgumentTypeError(
            f"cannot track {_brief(obj)}: extra state is a pytorch_saver.RNG, a "
            "pytorch_saver.Counters, a torch.Generator, a torch.amp.GradScaler or an object with "
            "state_dict() and load_state_dict()"
        )
    return class_name(type(obj))


def state_of(obj: Any) -> Any:
    """The state to save of a tracked object."""
    if isinstance(obj, torch.Generator):
        return {"state": obj.get_state()}
    return obj.state_dict()


def _check(obj: Any, state: Any, name: str) -> None:
    if isinstance(obj, (RNG, Counters)):
        try:
            obj.check_state_dict(state)
        except StateMismatchError as exc:
            raise StateMismatchError(f"extra state {name!r}: {exc}") from None
    elif isinstance(obj, torch.Generator):
        if not isinstance(state, dict) or set(state) != {"state"}:
            raise StateMismatchError(f"extra state {name!r}: a torch.Generator state is {{state}}")
        _check_generator_state(state["state"], obj.get_state(), f"{name}.state")


def _apply(obj: Any, state: Any) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state["state"].clone())
    else:
        obj.load_state_dict(state)


def restore_all(entries: Sequence[tuple[str, Any, Any]]) -> None:
    """Load each ``(name, object, decoded state)``, all or nothing: the
    states are checked first (the built-in classes' layouts), then each
    object's current state is kept and the states loaded; if one fails, the
    objects loaded before it get their kept state back and
    :class:`StateMismatchError` names the entry."""
    for name, obj, state in entries:
        _check(obj, state, name)
    kept = [(name, obj, copy.deepcopy(state_of(obj))) for name, obj, _ in entries]
    done: list[tuple[str, Any, Any]] = []
    for (name, obj, state), before in zip(entries, kept, strict=True):
        try:
            _apply(obj, state)
        except Exception as exc:
            # The failing object too: its load may have got halfway.
            for _, done_obj, done_before in [before, *reversed(done)]:
                try:
                    _apply(done_obj, done_before)
                except Exception:
                    pass
            if isinstance(exc, PytorchSaverError):
                raise
            raise StateMismatchError(
                f"loading the saved extra state {name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        done.append(before)
