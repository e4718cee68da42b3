"""Engine benchmark: erp-backup's backup/restore engine against tar | zstd on the same tree.

    .venv/bin/python bench/bench_engine.py [--size-gb 1.0] [--files 18000] [--workdir DIR]
                                           [--double] [--repeat 3] [--no-peers] [--no-prefect-flow]

No Prefect in the measured path: each engine measurement runs ``run_backup`` or
``restore`` in a fresh child Python process that reports its own wall time (imports
excluded), stage timings and peak RSS. Prefect's start-up is measured apart.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO_ROOT))

from gen_tree import DB_NAME, EXCLUDES, generate, mutate  # noqa: E402

PY = sys.executable
TAR_EXCLUDES = [f"--exclude={p}" for p in EXCLUDES] + [f"--exclude=./{DB_NAME}{s}" for s in ("", "-wal", "-shm",
                                                                                                "-journal")]

# Targets (see README): ratio to the baseline or absolute seconds / MB.
TARGETS: dict[str, tuple[str, float] | None] = {
    # issue #12's targets (issue #2's restore target kept)
    "full_none": ("ratio", 1.2),
    "full_verify": ("ratio", 1.4),
    "incr_nochange": ("seconds", 0.3),
    "restore": ("ratio", 1.2),
    "peer": ("ratio", 0.5),  # stay >= 2x faster than restic and borg
    "many_incr": ("seconds", 2.0),  # no-change incremental on the --many tree
    # reported, no target set
    "incr_1pct": None,
    "scan_nochange": None,
}
CLI_SLACK_S = 2.0  # `erp-backup backup incremental` from the CLI: <= engine no-change time + this
RSS_TARGET_MB = 150.0
RSS_FLAT_TOLERANCE = 1.10  # doubled tree: peak RSS may grow at most 10 % (or 10 MB; issue #12)


# ----------------------------------------------------------------------------- child mode


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _child(args: argparse.Namespace) -> None:
    t_imp = time.monotonic()
    from erp_backup.adapters.storage.local import LocalRepository
    from erp_backup.config import settings_from_dict
    from erp_backup.core.models import BackupKind
    from erp_backup.pipeline import run_backup
    from erp_backup.restore import restore

    import_s = time.monotonic() - t_imp
    out: dict[str, object] = {"import_s": round(import_s, 3)}
    if args.child == "backup":
        settings = settings_from_dict({
            "project": {"root": args.root},
            "database": {"url": f"sqlite:///{args.db}"},
            "storage": {"local_dir": args.repo},
            "backup": {"verify": args.verify, "missing_parent": "fail", "lock_wait_s": 0},
        })
        kind = {"full": BackupKind.FULL, "incremental": BackupKind.INCREMENTAL}[args.kind]
        if args.profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        t, c = time.monotonic(), _cpu()
        res = run_backup(settings, kind)
        cpu = _cpu() - c
        wall = time.monotonic() - t
        if args.profile:
            prof.disable()
            prof.dump_stats(args.profile)
        st = res.manifest.stats
        out.update(wall=wall, timings=res.timings, id=res.manifest.id.value, files_scanned=st.files_scanned,
                   files_changed=st.files_changed, bytes_in=st.bytes_in, bytes_out=st.bytes_out,
                   files_bytes_out=next(a.size for a in res.manifest.artifacts if a.role == "files"))
    else:
        if args.profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        t, c = time.monotonic(), _cpu()
        rep = restore(LocalRepository(Path(args.repo)), target_dir=Path(args.target), backup_id=args.id)
        cpu = _cpu() - c
        wall = time.monotonic() - t
        if args.profile:
            prof.disable()
            prof.dump_stats(args.profile)
        out.update(wall=wall, files=rep.files, bytes=rep.bytes, dirs=rep.dirs)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child spawned by a big
    # parent would report the parent's peak. VmHWM belongs to this process image only.
    out["maxrss_mb"] = _vm_hwm_mb()
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["cpu_s"] = round(cpu, 3)  # user+sys of the call, every thread (zstd's included); no child processes
    print("BENCH-RESULT " + json.dumps(out))


def engine(*argv: str) -> dict:
    """Run one engine measurement in a fresh interpreter; return what it reports."""
    cmd = [PY, str(Path(__file__).resolve()), *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if p.returncode != 0:
        raise SystemExit(f"engine child failed: {' '.join(argv)}\n{p.stdout}\n{p.stderr}")
    line = next(x for x in p.stdout.splitlines() if x.startswith("BENCH-RESULT "))
    return json.loads(line.split(" ", 1)[1])


# ----------------------------------------------------------------------------- helpers


LAST_CPU: list[float] = [0.0]  # user+sys of the last ``sh`` command's whole process tree


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def sh(cmd: str, cwd: Path | None = None, env: dict | None = None) -> float:
    """Run a shell pipeline (bash, pipefail); return wall seconds (its CPU goes to ``LAST_CPU``)."""
    t, c = time.monotonic(), _children_cpu()
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.monotonic() - t
    LAST_CPU[0] = _children_cpu() - c
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {cmd}\n{p.stderr[-2000:]}")
    return dt


def q(p: Path | str) -> str:
    return "'" + str(p).replace("'", "'\\''") + "'"


def _linked_copy(repo: Path, r: Path) -> None:
    """A hard-linked copy of a repository, without its lock file: erp-backup refuses a lock that
    is a hard link (another repository's lock), and recreates it."""
    sh(f"cp -al {q(repo)} {q(r)}")
    (r / ".lock").unlink(missing_ok=True)


def rm(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def warm(root: Path) -> None:
    """Read every file once so all runs see the same (page-cached) tree."""
    buf = bytearray(1 << 20)
    for dirpath, _, names in os.walk(root):
        for n in names:
            try:
                with open(os.path.join(dirpath, n), "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass
            except OSError:
                pass


def count_files(d: Path) -> tuple[int, int]:
    n = b = 0
    for dirpath, _, names in os.walk(d):
        for x in names:
            st = os.lstat(os.path.join(dirpath, x))
            if not os.path.islink(os.path.join(dirpath, x)):
                n += 1
                b += st.st_size
    return n, b


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- measurements


class Bench:
    def __init__(self, work: Path, repeat: int) -> None:
        self.work = work
        self.repeat = repeat
        self.root = work / "tree"
        self.db = self.root / DB_NAME
        self.results: dict[str, dict] = {}

    def p(self, name: str) -> Path:
        return self.work / name

    # baselines -------------------------------------------------------------
    def tar_zstd(self, root: Path, out: Path) -> float:
        rm(out)
        return sh(f"tar -C {q(root)} {' '.join(TAR_EXCLUDES)} -cf - . | zstd -q -T0 -3 -f -o {q(out)}")

    def baseline_full(self) -> None:
        out = self.p("baseline.tar.zst")
        times, cpus = [], []
        for _ in range(self.repeat):
            times.append(self.tar_zstd(self.root, out))
            cpus.append(LAST_CPU[0])
        self.results["base_full"] = {"runs": times, "s": med(times), "out_bytes": out.stat().st_size,
                                     "cpu_runs": cpus, "cpu_s": med(cpus)}
        log(f"tar|zstd: {med(times):.2f} s, {out.stat().st_size / 1e6:.0f} MB out")
        # tar | cat > /dev/null: read speed (tar writes to a pipe, so it does read every file)
        t = [sh(f"tar -C {q(self.root)} {' '.join(TAR_EXCLUDES)} -cf - . | cat > /dev/null")
             for _ in range(min(2, self.repeat))]
        self.results["base_tar_cat"] = {"runs": t, "s": med(t)}
        # the engine fsyncs its artifact; the same pipeline + fsync of the output, for reference
        t = [self.tar_zstd(self.root, out) + sh(f"sync {q(out)}") for _ in range(self.repeat)]
        self.results["base_full_fsync"] = {"runs": t, "s": med(t)}
        sh(f"tar -C {q(self.root)} {' '.join(TAR_EXCLUDES)} -cf {q(self.p('plain.tar'))} .")
        listing = subprocess.run(["tar", "-tvf", str(self.p("plain.tar"))], capture_output=True, text=True).stdout
        n = sum(1 for line in listing.splitlines() if line.startswith("-"))
        self.results["base_tar_cat"]["files"] = n
        rm(self.p("plain.tar"))

    def baseline_restore(self) -> None:
        out = self.p("baseline.tar.zst")
        times = []
        for _ in range(self.repeat):
            d = self.p("base-restore")
            rm(d)
            d.mkdir()
            times.append(sh(f"zstd -q -d -c {q(out)} | tar -x -C {q(d)}"))
            rm(d)
        self.results["base_restore"] = {"runs": times, "s": med(times)}
        log(f"zstd -d | tar -x: {med(times):.2f} s")

    def baseline_snar(self) -> None:
        snar0 = self.p("level0.snar")
        rm(snar0)
        sh(f"tar -C {q(self.root)} --listed-incremental={q(snar0)} {' '.join(TAR_EXCLUDES)} "
           f"-cf {q(self.p('l0.tar'))} .")
        rm(self.p("l0.tar"))
        times = []
        for _ in range(max(3, self.repeat)):
            s = self.p("l1.snar")
            shutil.copy(snar0, s)
            times.append(sh(f"tar -C {q(self.root)} --listed-incremental={q(s)} {' '.join(TAR_EXCLUDES)} "
                            f"-cf {q(self.p('l1.tar'))} ."))
        self.results["base_scan"] = {"runs": times, "s": med(times), "out_bytes": self.p("l1.tar").stat().st_size}
        rm(self.p("l1.tar"))
        log(f"tar --listed-incremental no-change: {med(times):.3f} s")

    def baseline_incr(self) -> None:
        """After mutate(): tar level-1 (against level 0) | zstd."""
        times = []
        out = self.p("l1.tar.zst")
        for _ in range(self.repeat):
            s = self.p("l1.snar")
            shutil.copy(self.p("level0.snar"), s)
            rm(out)
            times.append(sh(f"tar -C {q(self.root)} --listed-incremental={q(s)} {' '.join(TAR_EXCLUDES)} -cf - . "
                            f"| zstd -q -T0 -3 -f -o {q(out)}"))
        self.results["base_incr"] = {"runs": times, "s": med(times), "out_bytes": out.stat().st_size}
        rm(out)
        log(f"tar level-1 | zstd after 1% change: {med(times):.2f} s")

    # engine ----------------------------------------------------------------
    def eng_backup(self, repo: Path, kind: str, verify: str, root: Path | None = None,
                   profile: str | None = None) -> dict:
        root = root or self.root
        argv = ["--child", "backup", "--root", str(root), "--db", str(root / DB_NAME), "--repo", str(repo),
                "--kind", kind, "--verify", verify]
        if profile:
            argv += ["--profile-out", profile]
        return engine(*argv)

    def eng_full(self, verify: str, key: str, keep_repo: Path | None = None) -> None:
        runs = []
        self.last_id = ""
        for i in range(self.repeat):
            repo = self.p(f"repo-{key}")
            rm(repo)
            runs.append(self.eng_backup(repo, "full", verify))
            if keep_repo is not None and i == self.repeat - 1:
                self.last_id = runs[-1]["id"]
                rm(keep_repo)
                repo.rename(keep_repo)
            else:
                rm(repo)
        self.results[key] = self._summ(runs)
        log(f"engine full (verify={verify}): {self.results[key]['s']:.2f} s, "
            f"RSS {self.results[key]['maxrss_mb']:.0f} MB, stages {self.results[key]['timings']}")

    def _summ(self, runs: list[dict]) -> dict:
        walls = [r["wall"] for r in runs]
        mid = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]  # the median run's details
        return {"runs": walls, "s": med(walls), "timings": mid.get("timings", {}),
                "cpu_runs": [r.get("cpu_s") for r in runs], "cpu_med_s": med([r.get("cpu_s", 0) for r in runs]),
                "maxrss_mb": max(r.get("maxrss_mb", 0) for r in runs),
                **{k: mid[k] for k in mid if k not in ("wall", "timings", "maxrss_mb")}}

    def eng_restore(self, repo: Path, full_id: str) -> None:
        runs = []
        for _ in range(self.repeat):
            d = self.p("eng-restore")
            rm(d)
            runs.append(engine("--child", "restore", "--repo", str(repo), "--id", full_id, "--target", str(d)))
            if _ == 0:
                n, b = count_files(d)
                self.results["restore_check"] = {"files_in_target": n, "bytes_in_target": b}
            rm(d)
        self.results["restore"] = self._summ(runs)
        log(f"engine restore: {self.results['restore']['s']:.2f} s, RSS {self.results['restore']['maxrss_mb']:.0f} MB")

    def eng_incr(self, repo: Path, key: str, verify: str = "full") -> None:
        """Incrementals on a hard-linked copy of ``repo``, so each repetition sees the same parent."""
        runs = []
        for _ in range(self.repeat):
            r = self.p(f"repo-{key}")
            rm(r)
            _linked_copy(repo, r)
            runs.append(self.eng_backup(r, "incremental", verify))
            rm(r)
        self.results[key] = self._summ(runs)
        log(f"engine incremental {key} (verify={verify}): {self.results[key]['s']:.3f} s, "
            f"changed {self.results[key]['files_changed']}, stages {self.results[key]['timings']}")


    def cli_incr(self, repo: Path) -> None:
        """``erp-backup --config C backup incremental`` as a user runs it: a fresh process, no
        ``PREFECT_API_URL`` and an empty Prefect home (no profile: no server configured)."""
        cli = Path(PY).parent / "erp-backup"
        cfg = self.p("cli.toml")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ERP_BACKUP_"))}
        env.update(PREFECT_HOME=str(self.p("cli-prefect-home")), DO_NOT_TRACK="1")
        runs, cpus = [], []
        for _ in range(self.repeat):
            r = self.p("repo-cli")
            rm(r)
            _linked_copy(repo, r)
            cfg.write_text(f'[project]\nroot = "{self.root}"\n[database]\nurl = "sqlite:///{self.db}"\n'
                           f'[storage]\nlocal_dir = "{r}"\n[backup]\nmissing_parent = "fail"\n')
            runs.append(sh(f"{q(cli)} --config {q(cfg)} backup incremental", cwd=self.work, env=env))
            cpus.append(LAST_CPU[0])
            rm(r)
        self.results["cli_incr"] = {"runs": runs, "s": med(runs), "cpu_runs": cpus, "cpu_s": med(cpus)}
        log(f"CLI backup incremental (no server): {med(runs):.2f} s wall, {med(cpus):.2f} CPU-s")

    def many(self, files: int, size_gb: float) -> None:
        """Peak RSS (and the no-change incremental's time) on a tree of ``files`` files."""
        root = self.p("many")
        log(f"generating the many-file tree ({files} files, {size_gb} GB) ...")
        generate(root, size_gb, files, seed=21, junk=False, verbose=False)
        warm(root)
        repo = self.p("repo-many")
        rm(repo)
        full = self.eng_backup(repo, "full", "full", root=root)
        incr = [self.eng_backup(repo, "incremental", "full", root=root) for _ in range(self.repeat)]
        d = self.p("many-restore")
        rm(d)
        rest = engine("--child", "restore", "--repo", str(repo), "--id", full["id"], "--target", str(d))
        rm(d)
        rm(repo)
        rm(root)
        self.results["many"] = {"files": files, "size_gb": size_gb, "full": full, "incr": self._summ(incr),
                                "restore": rest}
        log(f"{files} files: full {full['wall']:.1f} s RSS {full['maxrss_mb']:.0f} MB; no-change incremental "
            f"{med([r['wall'] for r in incr]):.2f} s RSS {max(r['maxrss_mb'] for r in incr):.0f} MB; "
            f"restore RSS {rest['maxrss_mb']:.0f} MB")


# ----------------------------------------------------------------------------- peers


def peers(b: Bench, repeat: int) -> dict:
    res: dict[str, dict] = {}
    have_restic = shutil.which("restic") is not None
    have_borg = shutil.which("borg") is not None
    n_expected = b.results["base_tar_cat"]["files"]
    if have_restic:
        env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(b.p("restic")),
               "RESTIC_CACHE_DIR": str(b.p("restic-cache"))}
        rm(b.p("restic"))
        rm(b.p("restic-cache"))
        sh("restic init -q", env=env)
        ex = " ".join(f"--exclude={q(p)}" for p in EXCLUDES) + f" --exclude={q(str(b.db))}*"
        version = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.strip()
        full = sh(f"restic backup -q {ex} {q(b.root)}", env=env)
        nochange = [sh(f"restic backup -q {ex} {q(b.root)}", env=env) for _ in range(repeat)]
        d = b.p("restic-restore")
        rm(d)
        rest = sh(f"restic restore -q latest --target {q(d)}", env=env)
        n, _ = count_files(d / str(b.root).lstrip("/"))
        rm(d)
        size = sum(f.stat().st_size for f in b.p("restic").rglob("*") if f.is_file())
        res["restic"] = {"version": version, "full_s": full, "nochange_runs": nochange, "nochange_s": med(nochange),
                         "restore_s": rest, "repo_bytes": size, "files_restored": n, "files_expected": n_expected,
                         "notes": "AES-256 always on; default compression (auto)"}
        log(f"restic: full {full:.1f} s, no-change {med(nochange):.2f} s, restore {rest:.1f} s, files {n}")
        rm(b.p("restic"))
        rm(b.p("restic-cache"))
    if have_borg:
        env = {**os.environ, "BORG_REPO": str(b.p("borg")), "BORG_BASE_DIR": str(b.p("borg-home")),
               "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
        rm(b.p("borg"))
        rm(b.p("borg-home"))
        sh("borg init -e none", env=env)
        version = subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout.strip()
        ex = " ".join(f"--exclude={q('sh:**/' + p)}" for p in EXCLUDES) + f" --exclude={q('sh:' + DB_NAME + '*')}"
        full = sh(f"borg create --compression zstd,3 {ex} ::a0 .", cwd=b.root, env=env)
        nochange = [sh(f"borg create --compression zstd,3 {ex} ::a{i + 1} .", cwd=b.root, env=env)
                    for i in range(repeat)]
        d = b.p("borg-restore")
        rm(d)
        d.mkdir()
        rest = sh("borg extract ::a0", cwd=d, env=env)
        n, _ = count_files(d)
        rm(d)
        size = sum(f.stat().st_size for f in b.p("borg").rglob("*") if f.is_file())
        res["borg"] = {"version": version, "full_s": full, "nochange_runs": nochange, "nochange_s": med(nochange),
                       "restore_s": rest, "repo_bytes": size, "files_restored": n, "files_expected": n_expected,
                       "notes": "encryption none, --compression zstd,3"}
        log(f"borg: full {full:.1f} s, no-change {med(nochange):.2f} s, restore {rest:.1f} s, files {n}")
        rm(b.p("borg"))
        rm(b.p("borg-home"))
    if not have_restic:
        res["restic"] = {"unavailable": "restic not installed (apt-get install -y restic)"}
    if not have_borg:
        res["borg"] = {"unavailable": "borg not installed (apt-get install -y borgbackup)"}
    return res


# ----------------------------------------------------------------------------- Prefect


def prefect_startup(work: Path, repeat: int, flow: bool) -> dict:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_HOME": str(work / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    imp = [sh(f"{q(PY)} -c 'import prefect'", cwd=REPO_ROOT, env=env) for _ in range(repeat)]
    py = [sh(f"{q(PY)} -c 'pass'", cwd=REPO_ROOT, env=env) for _ in range(repeat)]
    out: dict[str, object] = {"import_prefect_s": med(imp), "python_startup_s": med(py), "import_runs": imp}
    log(f"import prefect: {med(imp):.2f} s (bare python {med(py):.2f} s)")
    if flow:
        tiny = work / "tiny"
        rm(tiny)
        generate(tiny, size_gb=0.002, files=200, seed=5, junk=False, verbose=False)
        cfg = work / "tiny.toml"
        cfg.write_text(f'[project]\nroot = "{tiny}"\n[database]\nurl = "sqlite:///{tiny / DB_NAME}"\n'
                       f'[storage]\nlocal_dir = "{work / "tiny-repo"}"\n')
        code = ("import time; t=time.monotonic(); from erp_backup.flows.backup import full_backup; "
                "t1=time.monotonic(); "
                f"full_backup(config={str(cfg)!r}); t2=time.monotonic(); "
                "print('FLOW', t1-t, t2-t1)")
        t = time.monotonic()
        p = subprocess.run([PY, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        total = time.monotonic() - t
        if p.returncode == 0:
            line = next((x for x in p.stdout.splitlines() if x.startswith("FLOW")), "FLOW nan nan").split()
            out.update(flow_process_s=total, flow_import_s=float(line[1]), flow_call_s=float(line[2]),
                       flow_note="ephemeral mode, fresh PREFECT_HOME, 200-file tree")
            log(f"ephemeral full_backup flow on a tiny tree: {total:.1f} s in all ({line[2][:5]} s in the call)")
        else:
            out["flow_error"] = (p.stderr or p.stdout)[-1500:]
            log("ephemeral flow run failed; see JSON")
        rm(tiny)
        rm(work / "tiny-repo")
        rm(work / "prefect-home")
    return out


# ----------------------------------------------------------------------------- report


def row(name: str, s: float, base: float | None, target: tuple[str, float] | None, mbps_bytes: int | None
        ) -> dict:
    ratio = s / base if base else None
    verdict = ""
    tgt = ""
    if target:
        kind, v = target
        if kind == "ratio":
            tgt = f"<= {v:.1f}x"
            verdict = "pass" if ratio is not None and ratio <= v else "MISS"
        else:
            tgt = f"<= {v:.2f} s"
            verdict = "pass" if s <= v else "MISS"
    mbps = mbps_bytes / s / 1e6 if mbps_bytes and s > 0 else None
    return {"measurement": name, "s": s, "ratio": ratio, "target": tgt, "verdict": verdict, "mb_s": mbps}


def print_table(rows: list[dict]) -> str:
    head = f"{'measurement':<58} {'seconds':>8} {'ratio':>7} {'target':>10} {'result':>6} {'MB/s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else ""
        mbps = f"{r['mb_s']:.0f}" if r["mb_s"] else ""
        lines.append(f"{r['measurement']:<58} {r['s']:>8.3f} {ratio:>7} {r['target']:>10} {r['verdict']:>6} {mbps:>7}")
    text = "\n".join(lines)
    print(text)
    return text


def build_rows(R: dict, tree_bytes: int) -> list[dict]:
    rows = []
    bf = R["base_full"]["s"]
    rows.append(row("baseline: tar | zstd -T0 -3 (full)", bf, None, None, tree_bytes))
    rows.append(row("baseline: tar | zstd, then fsync the output (reference)", R["base_full_fsync"]["s"], None, None,
                    tree_bytes))
    rows.append(row("baseline: tar | cat > /dev/null (read only, reference)", R["base_tar_cat"]["s"], None, None,
                    tree_bytes))
    rows.append(row("engine full backup, verify=none", R["full_none"]["s"], bf, TARGETS["full_none"], tree_bytes))
    for st, v in R["full_none"]["timings"].items():
        rows.append(row(f"   stage {st}", v, None, None, None))
    if "full_quick" in R:
        rows.append(row("engine full backup, verify=quick (artifact checksums)", R["full_quick"]["s"], bf,
                        TARGETS["full_verify"], tree_bytes))
        rows.append(row("   stage verify", R["full_quick"]["timings"].get("verify", 0), None, None, None))
    rows.append(row("engine full backup, verify=full (default)", R["full_verify"]["s"], bf, TARGETS["full_verify"],
                    tree_bytes))
    for st, v in R["full_verify"]["timings"].items():
        rows.append(row(f"   stage {st}", v, None, None, None))
    # CPU-seconds (user+sys, every thread / the whole pipeline): what wall time is on an idle machine,
    # and the fair comparison when other work shares the cores
    bc = R["base_full"].get("cpu_s")
    if bc:
        rows.append(row("CPU-s: tar | zstd -T0 -3 (full)", bc, None, None, None))
        rows.append(row("CPU-s: engine full backup, verify=none", R["full_none"]["cpu_med_s"], bc,
                        TARGETS["full_none"], None))
        rows.append(row("CPU-s: engine full backup, verify=full (default)", R["full_verify"]["cpu_med_s"], bc,
                        TARGETS["full_verify"], None))
    if "incr_1pct" in R:
        rows.append(row("baseline: tar --listed-incremental level 1 | zstd (1% chg)", R["base_incr"]["s"], None, None,
                        None))
        rows.append(row(f"engine incremental, 1% changed ({R['incr_1pct']['files_changed']} files)",
                        R["incr_1pct"]["s"], R["base_incr"]["s"], TARGETS["incr_1pct"], None))
        for st, v in R["incr_1pct"]["timings"].items():
            rows.append(row(f"   stage {st}", v, None, None, None))
    rows.append(row("baseline: tar --listed-incremental no-change (stat scan)", R["base_scan"]["s"], None, None, None))
    rows.append(row("engine incremental, no change, verify=full (default)", R["incr_nochange"]["s"],
                    R["base_scan"]["s"], TARGETS["incr_nochange"], None))
    for st, v in R["incr_nochange"]["timings"].items():
        rows.append(row(f"   stage {st}", v, None, None, None))
    if "incr_nochange_none" in R:
        rows.append(row("engine incremental, no change, verify=none", R["incr_nochange_none"]["s"], R["base_scan"]["s"],
                        TARGETS["incr_nochange"], None))
    if "cli_incr" in R:
        limit = R["incr_nochange"]["s"] + CLI_SLACK_S
        rows.append(row(f"CLI `backup incremental`, no server (<= engine + {CLI_SLACK_S:.0f} s)", R["cli_incr"]["s"],
                        None, ("seconds", limit), None))
    rows.append(row("engine scan stage alone (no change) vs tar snar scan", R["incr_nochange"]["timings"]["scan"],
                    R["base_scan"]["s"], TARGETS["scan_nochange"], None))
    rows.append(row("baseline: zstd -d | tar -x (restore)", R["base_restore"]["s"], None, None, tree_bytes))
    rows.append(row("engine restore of the full set", R["restore"]["s"], R["base_restore"]["s"], TARGETS["restore"],
                    tree_bytes))
    for name, pr in R.get("peers", {}).items():
        if "unavailable" in pr:
            continue
        rows.append(row(f"peer {name}: first backup", pr["full_s"], bf, None, tree_bytes))
        rows.append(row(f"engine full backup (default) vs {name}'s first backup", R["full_verify"]["s"], pr["full_s"],
                        TARGETS["peer"], None))
        rows.append(row(f"peer {name}: no-change backup", pr["nochange_s"], R["base_scan"]["s"], None, None))
        rows.append(row(f"peer {name}: restore", pr["restore_s"], R["base_restore"]["s"], None, tree_bytes))
    if "many" in R:
        M = R["many"]
        rows.append(row(f"{M['files']} files: no-change incremental", M["incr"]["s"], None, TARGETS["many_incr"],
                        None))
    return rows


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description="erp-backup engine benchmark (no Prefect)")
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=18000)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: a temp dir); removed after")
    ap.add_argument("--double", action="store_true", help="also run a full backup on a tree twice the size (RSS)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--no-peers", action="store_true", help="skip restic/borg")
    ap.add_argument("--no-prefect-flow", action="store_true", help="skip the ephemeral flow run (~15-30 s)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir (large!)")
    ap.add_argument("--many", type=int, default=0, metavar="N",
                    help="also measure peak RSS on an N-file tree (issue #12: 200000) and its no-change incremental")
    ap.add_argument("--many-gb", type=float, default=0.4, help="kept bytes of the --many tree")
    ap.add_argument("--profile", action="store_true", help="write cProfile stats of one full backup and one restore")
    # child mode (internal)
    ap.add_argument("--child", choices=["backup", "restore"], help=argparse.SUPPRESS)
    for k in ("root", "db", "repo", "kind", "verify", "id", "target"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", dest="profile_path", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.profile = a.profile_path
        _child(a)
        return

    for tool in ("tar", "zstd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required")
    t_all = time.monotonic()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="erp-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    b = Bench(work, a.repeat)
    R = b.results
    try:
        log(f"workdir {work}; generating {a.size_gb} GB / {a.files} files ...")
        tree = generate(b.root, a.size_gb, a.files)
        R["tree"] = {k: v for k, v in tree.items() if k != "kept"}
        warm(b.root)
        log("tree in page cache")

        b.baseline_full()
        b.baseline_snar()
        b.baseline_restore()

        b.eng_full("none", "full_none")
        b.eng_full("quick", "full_quick")
        full_repo = b.p("repo-main")
        b.eng_full("full", "full_verify", keep_repo=full_repo)
        full_id = b.last_id
        if a.profile:
            prof = out_dir / f"profile-full-{stamp}.pstats"
            rm(b.p("repo-prof"))
            engine("--child", "backup", "--root", str(b.root), "--db", str(b.db), "--repo", str(b.p("repo-prof")),
                   "--kind", "full", "--verify", "full", "--profile-out", str(prof))
            rm(b.p("repo-prof"))
            d = b.p("eng-restore")
            rm(d)
            engine("--child", "restore", "--repo", str(full_repo), "--id", full_id, "--target", str(d),
                   "--profile-out", str(out_dir / f"profile-restore-{stamp}.pstats"))
            rm(d)
        b.eng_restore(full_repo, full_id)

        b.eng_incr(full_repo, "incr_nochange", "full")
        b.eng_incr(full_repo, "incr_nochange_none", "none")
        b.cli_incr(full_repo)

        R["mutation"] = mutate(b.root, 0.01)
        warm(b.root)
        log(f"changed {R['mutation']['files']} files, {R['mutation']['bytes'] / 1e6:.1f} MB")
        b.baseline_incr()
        b.eng_incr(full_repo, "incr_1pct", "full")
        rm(full_repo)
        rm(b.p("baseline.tar.zst"))

        if not a.no_peers:
            R["peers"] = peers(b, a.repeat)
        R["prefect"] = prefect_startup(work, a.repeat, not a.no_prefect_flow)

        if a.many:
            b.many(a.many, a.many_gb)

        if a.double:
            rm(b.root)
            rm(b.p("level0.snar"))
            droot = b.p("tree2")
            log(f"generating the doubled tree ({2 * a.size_gb} GB / {2 * a.files} files) ...")
            t2 = generate(droot, 2 * a.size_gb, 2 * a.files, seed=11)
            warm(droot)
            R["double_tree"] = {k: v for k, v in t2.items() if k != "kept"}
            base2 = [b.tar_zstd(droot, b.p("b2.tar.zst"))]
            rm(b.p("b2.tar.zst"))
            runs = {}
            for verify in ("none", "full"):
                repo = b.p(f"repo2-{verify}")
                rm(repo)
                runs[verify] = b.eng_backup(repo, "full", verify, root=droot)
                if verify == "full":
                    d = b.p("eng-restore2")
                    rm(d)
                    runs["restore"] = engine("--child", "restore", "--repo", str(repo), "--id", runs["full"]["id"],
                                             "--target", str(d))
                    rm(d)
                rm(repo)
            R["double"] = {"base_full_s": base2[0], **{k: {"s": v["wall"], "maxrss_mb": v["maxrss_mb"],
                                                           "timings": v.get("timings")} for k, v in runs.items()}}
            log(f"doubled: tar|zstd {base2[0]:.1f} s; full none {runs['none']['wall']:.1f} s "
                f"RSS {runs['none']['maxrss_mb']:.0f} MB; full verify {runs['full']['wall']:.1f} s "
                f"RSS {runs['full']['maxrss_mb']:.0f} MB; restore RSS {runs['restore']['maxrss_mb']:.0f} MB")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    tree_bytes = R["tree"]["bytes"]
    rows = build_rows(R, tree_bytes)
    print()
    print(f"erp-backup engine benchmark — {R['tree']['files']} files, {tree_bytes / 1e9:.2f} GB kept "
          f"(+{R['tree']['junk_files']} excluded junk files), {os.cpu_count()} CPUs, medians of {a.repeat}")
    print(f"tar|zstd output {R['base_full']['out_bytes'] / 1e6:.0f} MB; engine files.tar.zst "
          f"{R['full_none']['files_bytes_out'] / 1e6:.0f} MB; tar lists {R['base_tar_cat']['files']} files, engine "
          f"scanned {R['full_none']['files_scanned']} entries (files+dirs+links)")
    print_table(rows)
    print()
    rss_rows = [("full backup, verify=none", R["full_none"]["maxrss_mb"]),
                ("full backup, verify=full", R["full_verify"]["maxrss_mb"]),
                ("restore", R["restore"]["maxrss_mb"]),
                ("incremental 1%", R["incr_1pct"]["maxrss_mb"])]
    print(f"peak RSS (child process, target < {RSS_TARGET_MB:.0f} MB):")
    R["rss"] = {}
    for name, v in rss_rows:
        ok = "pass" if v < RSS_TARGET_MB else "MISS"
        R["rss"][name] = v
        print(f"  {name:<34} {v:7.1f} MB  {ok}")
    if "many" in R:
        M = R["many"]
        for name, v in ((f"{M['files']} files: full backup", M["full"]["maxrss_mb"]),
                        (f"{M['files']} files: no-change incremental", M["incr"]["maxrss_mb"]),
                        (f"{M['files']} files: restore", M["restore"]["maxrss_mb"])):
            R["rss"][name] = v
            print(f"  {name:<34} {v:7.1f} MB  {'pass' if v < RSS_TARGET_MB else 'MISS'}")
    if "double" in R:
        D = R["double"]
        for name, k, base in (("full backup, verify=none", "none", R["full_none"]["maxrss_mb"]),
                              ("full backup, verify=full", "full", R["full_verify"]["maxrss_mb"]),
                              ("restore", "restore", R["restore"]["maxrss_mb"])):
            v = D[k]["maxrss_mb"]
            flat = v <= max(base * RSS_FLAT_TOLERANCE, base + 10) and v < RSS_TARGET_MB
            print(f"  doubled tree: {name:<20} {v:7.1f} MB (1x: {base:.1f} MB, x{v / base:.2f})  "
                  f"{'pass (flat)' if flat else 'MISS'}")
        print(f"  doubled tree timings: tar|zstd {D['base_full_s']:.2f} s, full none {D['none']['s']:.2f} s "
              f"(x{D['none']['s'] / D['base_full_s']:.2f}), full verify {D['full']['s']:.2f} s, "
              f"restore {D['restore']['s']:.2f} s")
    P = R["prefect"]
    print(f"\nPrefect (not in the figures above): `import prefect` {P['import_prefect_s']:.2f} s "
          f"(bare python {P['python_startup_s']:.2f} s)"
          + (f"; ephemeral full_backup flow on a 200-file tree: {P['flow_process_s']:.1f} s for the process, "
             f"{P['flow_call_s']:.1f} s in the flow call" if "flow_process_s" in P else ""))
    for name, pr in R.get("peers", {}).items():
        if "unavailable" in pr:
            print(f"peer {name}: {pr['unavailable']}")
        else:
            print(f"peer {name} ({pr['version'].splitlines()[0]}; {pr['notes']}): "
                  f"repo {pr['repo_bytes'] / 1e6:.0f} MB, "
                  f"restored {pr['files_restored']} of {pr['files_expected']} files")
    R["rows"] = rows
    R["meta"] = {"stamp": stamp, "cpus": os.cpu_count(), "python": sys.version.split()[0], "repeat": a.repeat,
                 "size_gb": a.size_gb, "files": a.files, "total_s": round(time.monotonic() - t_all, 1),
                 "targets": TARGETS, "rss_target_mb": RSS_TARGET_MB}
    path = out_dir / f"engine-{stamp}.json"
    path.write_text(json.dumps(R, indent=1, default=str))
    print(f"\nresults: {path} (whole run {R['meta']['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
