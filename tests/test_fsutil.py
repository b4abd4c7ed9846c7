"""The one atomic-write helper."""

from __future__ import annotations

import stat

import pytest

from digest import fsutil


def test_atomic_write_replaces_the_file_with_the_asked_mode(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    fsutil.atomic_write(path, b"one")
    assert path.read_bytes() == b"one" and stat.S_IMODE(path.stat().st_mode) == 0o644
    fsutil.atomic_write(path, b"two", mode=0o600)
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    fsutil.atomic_write(path, b"old")

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, "replace", broken)
    with pytest.raises(OSError):
        fsutil.atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
