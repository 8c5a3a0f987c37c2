"""bgplb.agent.statefile: durable writes (fsync file, rename, fsync directory) and a corrupt
or truncated file that is an error, never "nothing drained"."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bgplb.agent import statefile
from bgplb.agent.statefile import SavedState, StateFileError

SAVED = SavedState({"web"}, {"198.51.100.10/32"}, False, 1000.0)


def test_round_trip_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    assert statefile.load(path) == SavedState()
    statefile.save(path, SAVED)
    assert statefile.load(path) == SAVED
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left


def test_save_fsyncs_the_file_before_rename_and_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        calls.append(("fsync", "dir" if os.path.isdir(target) else Path(target).name))
        real_fsync(fd)

    def replace(src: str, dst: str | os.PathLike[str]) -> None:
        calls.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    statefile.save(path, SAVED)
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"], calls
    tmp_name = calls[0][1]
    assert tmp_name != "state.json" and tmp_name.endswith(".tmp")
    assert calls[1:] == [("replace", "state.json"), ("fsync", "dir")]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "empty"),
        ('{"drained": ["web"], "owned_v', "not valid JSON"),
        ("\x00\x00\x00\x00", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"drained": "web"}', "'drained' is not a list of strings"),
        ('{"drained": [1]}', "'drained' is not a list of strings"),
        ('{"owned_vips": {}}', "'owned_vips' is not a list of strings"),
        ('{"clean_exit": "no"}', "'clean_exit' is not true or false"),
        ('{"restart_at": "soon"}', "'restart_at' is not a number"),
    ],
)
def test_corrupt_or_truncated_file_is_an_error_not_nothing_drained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, reason: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with (
        caplog.at_level(logging.CRITICAL, logger="bgplb.agent"),
        pytest.raises(StateFileError, match=reason) as info,
    ):
        statefile.load(path)
    assert str(path) in str(info.value) and "does not start" in str(info.value)
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)
    assert path.read_text() == content  # left untouched for the operator


def test_every_truncation_of_a_real_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    statefile.save(path, SAVED)
    whole = path.read_bytes()
    for n in range(len(whole)):  # every proper prefix of a JSON object is invalid
        path.write_bytes(whole[:n])
        with pytest.raises(StateFileError):
            statefile.load(path)


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # reading a directory fails like an I/O error would
    with pytest.raises(StateFileError, match="cannot read"):
        statefile.load(path)


def test_save_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    statefile.save(blocker / "state.json", SAVED)  # parent is a file: cannot write
    assert "cannot write state file" in caplog.text
