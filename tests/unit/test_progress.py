"""The backup's progress artifact: stage shares, in-stage estimates, and the ticker that moves it
while a long stage writes its artifact."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from erp_backup import monitoring
from erp_backup.flows.ops import _ticker
from erp_backup.pipeline import Stages

ORDER = Stages.order()


def test_stage_shares_end_at_100() -> None:
    done = [monitoring.progress_after(s, ORDER) for s in ORDER]
    assert done == sorted(done) and done[-1] == 100.0 and done[0] > 0


@given(st.sampled_from(ORDER), st.floats(-1, 5, allow_nan=False), st.floats(-1, 5, allow_nan=False))
def test_within_a_stage_progress_stays_in_its_share_and_never_goes_back(stage: str, a: float, b: float) -> None:
    i = ORDER.index(stage)
    lo = monitoring.progress_after(ORDER[i - 1], ORDER) if i else 0.0
    hi = monitoring.progress_after(stage, ORDER)
    pa, pb = monitoring.progress_within(stage, ORDER, a), monitoring.progress_within(stage, ORDER, b)
    assert lo <= pa <= hi and lo <= pb <= hi
    assert (pa <= pb) if a <= b else (pb <= pa)


def test_estimates_follow_the_parent() -> None:
    parent = SimpleNamespace(artifact=lambda role: SimpleNamespace(size=1000) if role == "database" else None,
                             stats=SimpleNamespace(bytes_in=10_000, bytes_out=2_500))
    est = monitoring.estimates(parent, 4_000)  # type: ignore[arg-type]
    assert (est["dump"].prefix, est["dump"].expected) == ("db.", 1000)
    assert (est["archive"].prefix, est["archive"].expected) == ("files.", 1000)  # 4000 changed at ratio 0.25
    assert set(monitoring.estimates(None, 0)) == set()  # a first full with nothing changed: stage steps only


def test_ticker_moves_the_bar_while_the_archive_grows(tmp_path: Path) -> None:
    plan = SimpleNamespace(partial=tmp_path, parent=None)
    scanned = SimpleNamespace(changes=SimpleNamespace(changed_bytes=2_000_000))  # expected 1 MB at ratio 0.5
    shown: list[tuple[float, str]] = []
    with _ticker("archive", {"prepare": plan, "scan": scanned}, ORDER, lambda p, t: shown.append((p, t)), 0.05):
        with open(tmp_path / "files.tar.zst", "wb") as f:
            for _ in range(8):
                f.write(b"x" * 100_000)
                f.flush()
                time.sleep(0.15)
    pcts = [p for p, _ in shown]
    assert len(set(pcts)) >= 3, shown  # it moved, more than once
    assert pcts == sorted(pcts)
    lo, hi = monitoring.progress_after("dump", ORDER), monitoring.progress_after("archive", ORDER)
    assert all(lo < p < hi for p in pcts)
    assert "written" in shown[-1][1]
    with _ticker("seal", {"prepare": plan, "scan": scanned}, ORDER, lambda p, t: shown.append((p, t)), 0.05):
        n = len(shown)
        time.sleep(0.2)
    assert len(shown) == n  # no estimate for short stages: no ticker
