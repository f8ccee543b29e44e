"""Retention of a checkpoint manager's series (FORMAT.md 12.4): a pure
function of the series' checkpoints and the policy, the same in every
language, so that a directory pruned from Python keeps what Rust, C, C++
and Go would keep."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["RULES", "Candidate", "Policy", "decide", "newest_first", "order_key"]

RULES = ("latest", "pinned", "last", "best", "every", "all")
"""The rule names, in the order :func:`decide` lists them."""


@dataclass(frozen=True)
class Candidate:
    """One checkpoint of the series: its file name, its manager block's step
    and metrics, its ``timestamp``, and whether it is pinned."""

    name: str
    step: int
    timestamp: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    pinned: bool = False


@dataclass(frozen=True)
class Policy:
    """What a manager keeps besides the latest and the pinned checkpoints;
    with none of ``keep_last``, ``keep_best``, ``keep_every_steps`` set it
    keeps every checkpoint."""

    keep_last: int | None = None
    keep_best: int | None = None
    metric: str | None = None
    mode: Literal["min", "max"] = "min"
    keep_every_steps: int | None = None


def order_key(c: Candidate) -> tuple[int, int, int, bytes]:
    """ "Newest" orders by step, then timestamp, then the name's collision
    number (``-9`` before ``-10``; none is 0), then file name in byte
    order; never by file times (FORMAT.md 12.4)."""
    return (c.step, c.timestamp, collision_number(c.name), os.fsencode(c.name))


def collision_number(name: str) -> int:
    """The ``n`` of a file named ``{stem}-{n}.zip`` (a same-second
    collision, FORMAT.md 7); 0 for a name without one."""
    stem = name.removesuffix(".zip")
    _, dash, n = stem.rpartition("-")
    return int(n) if dash and n.isdigit() else 0


def newest_first(candidates: Sequence[Candidate]) -> list[int]:
    """The indices of ``candidates``, newest first."""
    return sorted(range(len(candidates)), key=lambda i: order_key(candidates[i]), reverse=True)


def _best(candidates: Sequence[Candidate], policy: Policy) -> set[int]:
    assert policy.keep_best is not None and policy.metric is not None
    metric = policy.metric
    newest = newest_first(candidates)
    rank = {index: position for position, index in enumerate(newest)}
    scored = [i for i in newest if metric in candidates[i].metrics]
    sign = 1.0 if policy.mode == "min" else -1.0
    # Best value first; among equal values the newer first.
    scored.sort(key=lambda i: (sign * float(candidates[i].metrics[metric]), rank[i]))
    return set(scored[: policy.keep_best])


def decide(candidates: Sequence[Candidate], policy: Policy) -> list[tuple[str, ...]]:
    """For each candidate (in the order given), the names of the rules that
    keep it, in the order of :data:`RULES`; an empty tuple means it is
    deleted. ``latest`` keeps the newest, ``pinned`` the pinned ones,
    ``last`` the ``keep_last`` newest, ``best`` the ``keep_best`` with the
    best value of ``metric`` (lowest for ``mode="min"``, highest for
    ``"max"``; checkpoints without the metric are not candidates; ties go to
    the newer), ``every`` those whose step is a multiple of
    ``keep_every_steps``, and ``all`` every one when the policy sets none of
    ``keep_last``, ``keep_best`` and ``keep_every_steps``."""
    newest = newest_first(candidates)
    latest = newest[0] if newest else None
    last = set(newest[: policy.keep_last]) if policy.keep_last is not None else set()
    best = _best(candidates, policy) if policy.keep_best is not None else set()
    keep_all = policy.keep_last is None and policy.keep_best is None
    keep_all = keep_all and policy.keep_every_steps is None
    every = policy.keep_every_steps
    result: list[tuple[str, ...]] = []
    for i, c in enumerate(candidates):
        kept = {
            "latest": i == latest,
            "pinned": c.pinned,
            "last": i in last,
            "best": i in best,
            "every": every is not None and c.step % every == 0,
            "all": keep_all,
        }
        result.append(tuple(rule for rule in RULES if kept[rule]))
    return result
