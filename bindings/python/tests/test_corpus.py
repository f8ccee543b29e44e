"""The shared corpus of malformed files (tests/corpus/, README there): every
file is refused by ``read_checkpoint`` with the error kind and a message
naming the fault as the Rust reader reports them, so that the two readers
agree on which check a file fails (docs/FORMAT.md section 9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_saver
from pytorch_saver import FormatError, read_checkpoint
from pytorch_saver._format import CheckpointReader
from pytorch_saver._mapped import map_tensors

CORPUS = Path(__file__).resolve().parents[3] / "tests" / "corpus"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())["cases"]


def _outcome(path: Path) -> tuple[str, str]:
    """(kind, message) of reading ``path``: "ok" when it reads, the type's
    name for an error that is not a FormatError."""
    try:
        read_checkpoint(path)
    except FormatError as e:
        return e.kind, str(e)
    except Exception as e:  # a finding: reported, not raised
        return f"{type(e).__name__} (not a FormatError)", str(e)
    return "ok", ""


def test_the_manifest_lists_exactly_the_files_of_the_corpus() -> None:
    listed = [case["file"] for case in CASES]
    assert len(listed) == len(set(listed)), "a file listed twice"
    assert set(listed) == {p.name for p in CORPUS.glob("*.zip")}
    for case in CASES:
        assert set(case) == {"file", "kind", "message", "what"}, case
        assert case["kind"] and case["message"], case


def test_every_file_is_refused_with_the_kind_and_message_rust_reports() -> None:
    failures = []
    for case in CASES:
        kind, message = _outcome(CORPUS / case["file"])
        if kind != case["kind"] or case["message"] not in message:
            failures.append(
                f"{case['file']} ({case['what']}):\n"
                f"    want {case['kind']}: ...{case['message']}...\n"
                f"    got  {kind}: {message}"
            )
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures)


def test_an_unsupported_version_is_its_own_class() -> None:
    cases = [case for case in CASES if case["kind"] == "UnsupportedVersion"]
    assert cases
    for case in cases:
        with pytest.raises(pytorch_saver.UnsupportedVersionError):
            read_checkpoint(CORPUS / case["file"])


def test_the_mapped_read_reports_the_same_kinds() -> None:
    # What ModelContainer.load does by default: the same scan, then the
    # tensors mapped in place (CRC-32 and BOOL bytes checked over the map).
    for case in CASES:
        with pytest.raises(FormatError) as info:
            with CheckpointReader(CORPUS / case["file"]) as reader:
                map_tensors(reader.scan)
        assert info.value.kind == case["kind"], (case, info.value)
        assert case["message"] in str(info.value), (case, info.value)
