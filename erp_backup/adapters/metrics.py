"""Prometheus metrics: a node_exporter textfile (written atomically) and an optional Pushgateway push.

The textfile is the state: each update reads the samples already in it, changes the ones it knows
(a backup sets its kind's samples, a verify run the ``verify_ok`` ones, a restore test the RTO) and
writes the whole file again to a temporary file next to it, renamed over the old one, so
node_exporter never reads half a file. A file that does not parse is replaced, not trusted.

Metrics (all gauges):

- ``erp_backup_last_success_timestamp_seconds{kind}``: finish time of the newest committed set of the kind
- ``erp_backup_last_size_bytes{kind}``: its size on disk
- ``erp_backup_last_duration_seconds{kind}``: how long it took
- ``erp_backup_verify_ok{set_kind}``: 1 when every set of that kind passed the last verification, else 0
- ``erp_backup_rpo_seconds``: data-loss window closed by the newest set (its finish minus the finish of
  the set before it); alert on ``time() - max(erp_backup_last_success_timestamp_seconds)`` for staleness
- ``erp_backup_restore_test_rto_seconds``: how long the last restore test took to restore
- ``erp_backup_restore_test_rpo_seconds``: age of the data the last restore test restored
- ``erp_backup_restore_test_timestamp_seconds``: when the last restore test ran (Unix); alert on
  ``time() - erp_backup_restore_test_timestamp_seconds`` for a missed monthly test (``timestamp()`` of a
  textfile sample is the scrape time: node_exporter exposes no sample time)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, generate_latest, push_to_gateway
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from erp_backup.core.errors import ConfigError, StorageError

HELP = {
    "erp_backup_last_success_timestamp_seconds": ("kind", "Finish time (Unix) of the newest committed backup set"),
    "erp_backup_last_size_bytes": ("kind", "Size on disk of the newest committed backup set"),
    "erp_backup_last_duration_seconds": ("kind", "Duration of the newest committed backup"),
    "erp_backup_verify_ok": ("set_kind", "1 if every set of this kind passed the last verification, else 0"),
    "erp_backup_rpo_seconds": ("", "Seconds between the newest backup set and the one before it"),
    "erp_backup_restore_test_rto_seconds": ("", "Restore duration of the last restore test"),
    "erp_backup_restore_test_rpo_seconds": ("", "Age of the data restored by the last restore test"),
    "erp_backup_restore_test_timestamp_seconds": ("", "When the last restore test ran (Unix time)"),
}

Key = tuple[str, str]  # (metric name, label value or "")


@dataclass(frozen=True)
class Update:
    """Samples to set: {(metric, label value): value}."""

    samples: Mapping[Key, float]

    def __post_init__(self) -> None:
        for (name, _label) in self.samples:
            if name not in HELP:
                raise ValueError(f"unknown metric {name}")


def backup_update(kind: str, finished_unix: float, size_bytes: int, duration_s: float,
                  previous_finished_unix: float | None, *, verified: bool = True) -> Update:
    """What a committed backup set changes (``verified``: it passed verification before the commit,
    so verify_ok of its kind is 1 until a verify run says otherwise)."""
    samples: dict[Key, float] = {
        ("erp_backup_last_success_timestamp_seconds", kind): finished_unix,
        ("erp_backup_last_size_bytes", kind): float(size_bytes),
        ("erp_backup_last_duration_seconds", kind): duration_s,
    }
    if verified:
        samples[("erp_backup_verify_ok", kind)] = 1.0
    if previous_finished_unix is not None:
        samples[("erp_backup_rpo_seconds", "")] = max(0.0, finished_unix - previous_finished_unix)
    return Update(samples)


def verify_update(results: Iterable[tuple[str, bool]]) -> Update:
    """``results``: (set kind, passed) of every set verified; a kind is ok when all its sets passed."""
    ok: dict[str, bool] = {}
    for kind, passed in results:
        ok[kind] = ok.get(kind, True) and passed
    return Update({("erp_backup_verify_ok", k): 1.0 if v else 0.0 for k, v in ok.items()})


def restore_test_update(rto_s: float, rpo_s: float | None = None, tested_unix: float | None = None) -> Update:
    samples: dict[Key, float] = {("erp_backup_restore_test_rto_seconds", ""): rto_s,
                                 ("erp_backup_restore_test_timestamp_seconds", ""):
                                     time.time() if tested_unix is None else tested_unix}
    if rpo_s is not None:
        samples[("erp_backup_restore_test_rpo_seconds", "")] = rpo_s
    return Update(samples)


def read_samples(path: Path) -> dict[Key, float]:
    """Our samples in an existing textfile; {} when it is missing or does not parse."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return {}
    except OSError as e:
        raise StorageError(f"metrics textfile {path} is not readable: {e.strerror}",
                           hint="fix its permissions or [monitoring] textfile") from e
    out: dict[Key, float] = {}
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name in HELP:
                    label = HELP[s.name][0]
                    out[(s.name, s.labels.get(label, "") if label else "")] = float(s.value)
    except ValueError:
        return {}  # a damaged file is rewritten from what we know now
    return out


class _Samples(Collector):
    def __init__(self, samples: Mapping[Key, float]) -> None:
        self.samples = dict(samples)

    def collect(self) -> Iterator[Metric]:
        for name, (label, doc) in HELP.items():
            fam = GaugeMetricFamily(name, doc, labels=[label] if label else None)
            mine = sorted((lv, v) for (n, lv), v in self.samples.items() if n == name)
            if not mine:
                continue
            for lv, v in mine:
                fam.add_metric([lv] if label else [], v)
            yield fam


def registry_of(samples: Mapping[Key, float]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Samples(samples))
    return reg


def write_textfile(path: Path, update: Update) -> dict[Key, float]:
    """Merge ``update`` into the textfile at ``path`` (atomic: temp file + rename); the merged samples."""
    if not path.parent.is_dir():
        raise ConfigError(f"[monitoring] textfile: directory {path.parent} does not exist",
                          hint="create it (node_exporter's --collector.textfile.directory) or fix the path")
    merged = {**read_samples(path), **update.samples}
    data = generate_latest(registry_of(merged))
    # a temporary file of an unpredictable name created exclusively (mkstemp: O_EXCL, never through a
    # planted link), written, synced, then renamed over the old file: readers see old or new, whole
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o644)  # node_exporter runs as its own user; the file holds no secret
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise StorageError(f"cannot write metrics textfile {path}: {e.strerror}",
                           hint="check the directory's permissions and free space") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return merged


def redact(url: str) -> str:
    """``url`` without the credentials of its authority (``http://user:pw@host`` -> ``http://***@host``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def push(gateway: str, job: str, samples: Mapping[Key, float], *, timeout: float = 10) -> None:
    """PUT the samples to a Pushgateway under ``job`` (replaces that job's group)."""
    try:
        push_to_gateway(gateway, job=job, registry=registry_of(samples), timeout=timeout)
    except (OSError, ValueError) as e:  # urllib errors are OSErrors; a malformed URL a ValueError
        detail = str(e).replace(gateway, redact(gateway))
        raise StorageError(f"cannot push metrics to {redact(gateway)}: {detail}",
                           hint="check [monitoring] pushgateway and that the Pushgateway is up") from e


def publish(textfile: Path | None, gateway: str | None, job: str, update: Update) -> dict[Key, float]:
    """Write the textfile and/or push, as configured; the samples published."""
    samples: dict[Key, float] = dict(update.samples)
    if textfile is not None:
        samples = write_textfile(textfile, update)
    if gateway:
        push(gateway, job, samples)
    return samples
