"""The verification log: one parseable line per set, rotation by size, no forged lines."""

from __future__ import annotations

import multiprocessing
import os
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from erp_backup import verify_log
from erp_backup.verify_log import VerifyLine

WHEN = datetime(2026, 11, 29, 7, 51, 3, tzinfo=UTC)


def test_one_line_per_set_with_its_fields(tmp_path: Path) -> None:
    log = tmp_path / "sub" / "verify.log"
    bad = VerifyLine("incr-20261129T030000Z", "quick", False, "files.tar.zst: sha256 mismatch")
    assert verify_log.append(log, [VerifyLine("full-20261129T020000Z", "full", True), bad], now=WHEN) is None
    lines = log.read_text().splitlines()
    assert lines == [
        "2026-11-29T07:51:03Z set=full-20261129T020000Z level=full outcome=passed problem=-",
        '2026-11-29T07:51:03Z set=incr-20261129T030000Z level=quick outcome=FAILED '
        'problem="files.tar.zst: sha256 mismatch"',
    ]
    assert verify_log.parse_line(lines[1]) == {"time": "2026-11-29T07:51:03Z", "set": "incr-20261129T030000Z",
                                               "level": "quick", "outcome": "FAILED",
                                               "problem": "files.tar.zst: sha256 mismatch"}
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert oct(log.parent.stat().st_mode & 0o777) == "0o700"


@given(st.text(max_size=60), st.text(max_size=60), st.booleans())
@example(name="-", problem="-", ok=False)  # "-" is the empty marker: a literal one is quoted
def test_any_set_name_or_problem_stays_one_line_and_parses_back(name: str, problem: str, ok: bool) -> None:
    text = verify_log.format_line(VerifyLine(name, "full", ok, problem), WHEN)
    assert text.count("\n") == 1 and text.endswith("\n")  # a crafted name cannot forge a second line
    back = verify_log.parse_line(text)
    assert back["set"] == name and back["problem"] == problem
    assert back["outcome"] == ("passed" if ok else "FAILED")


def test_rotates_by_size_and_keeps_n(tmp_path: Path) -> None:
    log = tmp_path / "verify.log"
    for i in range(40):
        verify_log.append(log, [VerifyLine(f"full-2026112{i % 10}T020000Z", "full", True, "x" * 200)],
                          max_bytes=1024, keep=2, now=WHEN)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        ["verify.log", "verify.log.1", "verify.log.2"]
    assert log.stat().st_size <= 1024 + 400
    for p in (log, tmp_path / "verify.log.1"):
        assert all(verify_log.parse_line(x)["outcome"] == "passed" for x in p.read_text().splitlines())


def _writer(path: str, n: int) -> None:
    for i in range(n):
        verify_log.append(Path(path), [VerifyLine(f"w{os.getpid()}-{i}", "quick", True)], max_bytes=1 << 30)


def test_concurrent_verifications_never_interleave(tmp_path: Path) -> None:
    log = tmp_path / "verify.log"
    procs = [multiprocessing.get_context("fork").Process(target=_writer, args=(str(log), 200)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 600
    assert all(verify_log.parse_line(x)["level"] == "quick" for x in lines)


def test_a_planted_symlink_is_not_followed_and_the_failure_is_a_warning(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log = tmp_path / "verify.log"
    log.symlink_to(victim)
    warn = verify_log.append(log, [VerifyLine("full-20261129T020000Z", "full", True)], now=WHEN)
    assert warn is not None and "symbolic link" in warn
    assert victim.read_text() == "precious\n"


def test_an_unwritable_log_is_a_warning_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    warn = verify_log.append(blocker / "verify.log", [VerifyLine("full-20261129T020000Z", "full", True)])
    assert warn is not None and "not written" in warn and "[verify] log" in warn
