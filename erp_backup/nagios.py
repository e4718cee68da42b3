"""``erp-backup status --nagios``: the status as one Nagios/Icinga plugin line and exit code.

Built on ``erp_backup.status.collect`` (the repository alone: no Prefect, no database). The
thresholds are ``[nagios]`` in the config, each a ``[warning, critical]`` pair of durations::

    OK - newest full 5h old, incremental 20m old, RPO 20m | rpo_s=1200;3600;7200 full_age_s=18000;93600;180000 …

Exit codes are the plugin API's: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the status could not be
read: no config, an unreadable backup directory). A kind that has never run is judged only once the
repository is older than that kind's warning threshold (a new installation has no monthly archive
yet and is not in trouble for it); a repository without any restorable set is CRITICAL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from erp_backup.core.objectives import human

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABEL = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True)
class Thresholds:
    """(warning, critical) in seconds."""

    age: dict[str, tuple[float, float]]  # per job: full, incremental, differential, monthly
    rpo: tuple[float, float]  # the critical tier's (the database): the newest restorable set with a dump
    restore_test_age: tuple[float, float]
    non_critical_rpo: tuple[float, float] = (24 * 3600.0, 48 * 3600.0)  # the non-critical tier ([tiers])


@dataclass(frozen=True)
class Verdict:
    code: int
    line: str


def _perf(label: str, value: float | None, pair: tuple[float, float] | None = None, uom: str = "") -> str:
    if value is None:
        return f"{label}=U"
    warn, crit = pair if pair else ("", "")
    fmt = (lambda x: f"{x:.0f}") if not isinstance(warn, str) else str
    return f"{label}={value:.0f}{uom};{fmt(warn)};{fmt(crit)}".rstrip(";")


def _level(value: float, pair: tuple[float, float]) -> int:
    return CRITICAL if value >= pair[1] else WARNING if value >= pair[0] else OK


def _clean(text: str) -> str:
    """Plugin output is one line, and ``|`` starts the performance data."""
    return re.sub(r"[\r\n|]+", " ", text).strip()


def evaluate(doc: dict[str, Any], t: Thresholds) -> Verdict:
    """The plugin verdict of a ``status.collect`` document."""
    findings: list[tuple[int, str]] = []
    perf: list[str] = []
    kinds: dict[str, Any] = doc.get("kinds") or {}
    oldest = max((k["age_seconds"] for k in kinds.values() if k), default=None)
    summary: list[str] = []
    for job, pair in t.age.items():
        k = kinds.get(job)
        if k is None:
            perf.append(_perf(f"{job}_age_s", None))
            if oldest is not None and oldest >= pair[0]:
                findings.append((_level(oldest, pair), f"no {job} set in {human(oldest)}"))
            continue
        age = float(k["age_seconds"])
        perf.append(_perf(f"{job}_age_s", age, pair))
        lvl = _level(age, pair)
        if lvl:
            findings.append((lvl, f"newest {job} {human(age)} old (limit {human(pair[lvl - 1])})"))
        if job in ("full", "incremental"):
            summary.append(f"{job} {human(age)} old")
        ver = k.get("verification") or {}
        if ver.get("outcome") == "failed":
            findings.append((CRITICAL, f"newest {job} {k['set']} failed verification: {ver.get('reason')}"))
    rpo = (doc.get("rpo") or {}).get("seconds")
    perf.insert(0, _perf("rpo_s", rpo, t.rpo))
    if rpo is None:
        findings.append((CRITICAL, "no restorable backup set"))
    else:
        summary.append(f"RPO {human(rpo)}")
        lvl = _level(float(rpo), t.rpo)
        if lvl:
            findings.append((lvl, f"RPO {human(rpo)} (limit {human(t.rpo[lvl - 1])})"))
    non = (doc.get("tiers") or {}).get("non_critical")
    if non is not None:
        sec = non.get("seconds")
        perf.insert(1, _perf("rpo_non_critical_s", sec, t.non_critical_rpo))
        lvl = _level(float(sec), t.non_critical_rpo) if sec is not None else OK
        if lvl:
            findings.append((lvl, f"non-critical tier RPO {human(sec)} (limit {human(t.non_critical_rpo[lvl - 1])})"))
    test = doc.get("restore_test")
    if test is None:
        perf.append(_perf("restore_test_age_s", None))
        if oldest is not None and oldest >= t.restore_test_age[0]:
            findings.append((_level(oldest, t.restore_test_age), "no restore test recorded"))
    else:
        age = test.get("age_seconds")
        perf.append(_perf("restore_test_age_s", age, t.restore_test_age))
        if not test.get("ok"):
            first = (test.get("problems") or ["failed"])[0]
            findings.append((CRITICAL, f"last restore test failed: {first}"))
        elif age is not None and _level(float(age), t.restore_test_age):
            lvl = _level(float(age), t.restore_test_age)
            findings.append((lvl, f"last restore test {human(age)} ago"))
        rto = test.get("rto_extrapolated_seconds")
        if rto is not None:
            perf.append(_perf("restore_test_rto_s", float(rto)))
    for p in doc.get("problems") or []:  # what status found beyond ages: damaged sets, half-done restores
        if p.get("check") in ("damaged", "in_place_restore", "foreign_safety_copy"):
            findings.append((CRITICAL if p.get("severity") == "critical" else WARNING, str(p.get("message"))))
    local = ((doc.get("usage") or {}).get("local") or {})
    if local.get("bytes") is not None:
        perf.append(f"local_bytes={int(local['bytes'])}B")
    code = max((c for c, _ in findings), default=OK)
    if code == OK:
        text = ", ".join(summary) or "no sets yet"
        text = f"newest {text}" if summary and summary[0].startswith(("full", "incremental")) else text
    else:
        worst = [m for c, m in findings if c == code] + [m for c, m in findings if c != code]
        text = "; ".join(worst)
    return Verdict(code, f"{LABEL[code]} - {_clean(text)} | {' '.join(perf)}")


def unknown(message: str) -> Verdict:
    return Verdict(UNKNOWN, f"UNKNOWN - {_clean(message)}")
