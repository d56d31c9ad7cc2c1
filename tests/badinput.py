"""Helpers for the bad-input suites (``tests/test_bad_input_*.py``).

Every case of those suites asserts two things: the outcome (a clear error that names the file and
the problem, or the correct result) and that the input folder and the cache are byte-identical
afterwards, except for files the operation was meant to write.

    from badinput import ERROR, RESULT, case, raises_naming, unchanged

    @pytest.mark.parametrize("edit", [case(ERROR, "negative counts", ...), ...])
    def test_x(edit, tmp_path):
        with unchanged(slide_dir, cache_dir, allow=["*.lock"]):
            with raises_naming(DataFileError, slide_dir / "counts.h5", "negative"):
                read_visium(slide_dir)

``case(kind, name, *values)`` makes a ``pytest.param`` whose id starts with its kind, so the tally
of a suite is ``pytest --collect-only -q tests/test_bad_input_*.py | grep -c '\\[error:'`` (or
``result:``).
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
from pathlib import Path

import pytest

ERROR = "error"  # the case must raise a clear error naming the file and the problem
RESULT = "result"  # the case must give the correct result


def case(kind: str, name: str, *values, marks=()):
    """A ``pytest.param`` for a bad-input table; its id is ``"<kind>:<name>"``."""
    if kind not in (ERROR, RESULT):
        raise ValueError(f"kind must be {ERROR!r} or {RESULT!r}, got {kind!r}")
    return pytest.param(*values, id=f"{kind}:{name}", marks=marks)


def snapshot(*folders) -> dict[str, str]:
    """Every file, directory and link under ``folders``: relative path -> sha256 of the bytes
    (``"<dir>"`` for a directory, ``"-> target"`` for a link). A missing folder snapshots empty."""
    state = {}
    for i, folder in enumerate(Path(f) for f in folders):
        if not folder.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                key = f"{i}:{path.relative_to(folder).as_posix()}"
                if path.is_symlink():
                    state[key] = f"-> {os.readlink(path)}"
                elif path.is_dir():
                    state[key] = "<dir>"
                else:
                    state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def differences(before: dict, after: dict, allow=()) -> list[str]:
    """Paths added, removed or modified between two snapshots, except those matching ``allow``
    (fnmatch patterns on the path relative to its folder, e.g. ``"*.lock"``, ``"slide/*"``)."""
    def allowed(key):
        rel = key.split(":", 1)[1]
        return any(fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(Path(rel).name, pattern)
                   for pattern in allow)

    out = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key) and not allowed(key):
            what = "added" if key not in before else "removed" if key not in after else "modified"
            out.append(f"{what}: {key.split(':', 1)[1]}")
    return out


@contextlib.contextmanager
def unchanged(*folders, allow=()):
    """Assert that nothing under ``folders`` changes inside the block (whether it raises or not),
    except paths matching ``allow``."""
    before = snapshot(*folders)
    try:
        yield
    finally:
        diff = differences(before, snapshot(*folders), allow)
        assert not diff, f"files changed on disk: {diff}"


@contextlib.contextmanager
def raises_naming(exc, path, *fragments):
    """``pytest.raises(exc)`` whose message names ``path`` (or, when ``path`` is a string without
    a slash, contains it) and contains every fragment (case-insensitive)."""
    with pytest.raises(exc) as info:
        yield info
    message = str(info.value)
    assert str(path) in message, f"the error does not name {path}: {message}"
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in: {message}"
