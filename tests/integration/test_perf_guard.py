"""Regression guard: a small version of ``bench/bench_engine.py`` that fails on a gross slowdown
only. Figures are CPU-seconds (user+sys of every thread and child process), not wall time: the
cores are shared with other work, and CPU time is what a slowdown adds. Each check allows twice
the ratio measured when the guard was written (BASELINES), so noise never fails it; a change that
doubles the engine's work on top of ``tar | zstd`` does (e.g. a second full decompression and
re-hash, a per-file Python hot spot, a Prefect server around a CLI run)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

pytestmark = pytest.mark.integration

sys.path.insert(0, str(REPO / "bench"))
from bench_engine import TAR_EXCLUDES  # noqa: E402
from gen_tree import DB_NAME, generate  # noqa: E402

# measured 2026-11-29 on the 2-core dev machine (loaded by parallel work), 0.1 GB / 2,000 files
BASELINES = {
    "full_default_vs_tar_zstd": 1.8,  # engine full backup (verify=full) CPU / tar|zstd CPU (measured 1.74)
    "incr_nochange_cpu_s": 0.12,  # engine no-change incremental, CPU-s (measured 0.06; tiny, so noisier)
    "cli_incr_cpu_s": 0.4,  # `erp-backup backup incremental`, whole process, no server configured (0.27;
    #                          importing Prefect alone costs ~1 CPU-s, its temporary server ~10)
}
SLACK = 2.0


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _engine(root: Path, repo: Path, kind: str) -> dict[str, object]:
    argv = [sys.executable, str(REPO / "bench" / "bench_engine.py"), "--child", "backup", "--root", str(root),
            "--db", str(root / DB_NAME), "--repo", str(repo), "--kind", kind, "--verify", "full"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("BENCH-RESULT "))
    result: dict[str, object] = json.loads(line.split(" ", 1)[1])
    return result


def _cpu_of(result: dict[str, object]) -> float:
    cpu = result["cpu_s"]
    assert isinstance(cpu, (int, float))
    return float(cpu)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("guard") / "tree"
    generate(root, size_gb=0.1, files=2000, seed=3, junk=True, verbose=False)
    yield root


def _min_of(n: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(n))


def test_full_backup_cpu_stays_near_tar_zstd(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "base.tar.zst"

    def tar_zstd() -> float:
        c = _children_cpu()
        subprocess.run(["bash", "-o", "pipefail", "-c",
                        f"tar -C '{tree}' {' '.join(TAR_EXCLUDES)} -cf - . | zstd -q -T0 -3 -f -o '{out}'"],
                       check=True, timeout=300)
        return _children_cpu() - c

    def engine_full() -> float:
        repo = tmp_path / "repo"
        subprocess.run(["rm", "-rf", str(repo)], check=True)
        return _cpu_of(_engine(tree, repo, "full"))

    base = _min_of(2, tar_zstd)
    eng = _min_of(2, engine_full)
    ratio = eng / base
    print(f"full backup CPU: engine {eng:.2f} s, tar|zstd {base:.2f} s, ratio {ratio:.2f}")
    assert ratio <= SLACK * BASELINES["full_default_vs_tar_zstd"], ratio


def test_no_change_incremental_engine_and_cli(tree: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _engine(tree, repo, "full")
    incr = _min_of(2, lambda: _cpu_of(_engine(tree, repo, "incremental")))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[project]\nroot = "{tree}"\n[database]\nurl = "sqlite:///{tree / DB_NAME}"\n'
                   f'[storage]\nlocal_dir = "{repo}"\n[backup]\nmissing_parent = "fail"\n')
    env = cli_env(PREFECT_HOME=str(tmp_path / "prefect-home"))

    def cli() -> float:
        c = _children_cpu()
        p = subprocess.run([str(Path(sys.executable).parent / "erp-backup"), "--config", str(cfg), "backup",
                            "incremental"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        return _children_cpu() - c

    cli_cpu = _min_of(2, cli)
    print(f"no-change incremental CPU: engine {incr:.2f} s, CLI process {cli_cpu:.2f} s")
    assert incr <= SLACK * BASELINES["incr_nochange_cpu_s"], incr
    assert cli_cpu <= SLACK * BASELINES["cli_incr_cpu_s"], cli_cpu
    assert len([d for d in os.listdir(repo) if d.endswith("-incr")]) == 4
