"""Off-site adapters benchmark: GPG stream encryption/decryption and S3 upload, as ratios to the tools.

    .venv/bin/python bench/bench_offsite.py [--enc-mb 500] [--upload-mb 300] [--repeat 3] [--workdir DIR]

* encrypt: a ~500 MB zstd stream through ``GpgEncryptor.wrap(HashingFile)`` (what the archive
  writer does, SHA-256 included) vs ``gpg --compress-algo none -e -r FPR -o OUT IN.zst``.
* decrypt: the encrypted file through ``GpgDecryptor`` (read and dropped) vs ``gpg -d > /dev/null``;
  both in a GNUPGHOME whose key was already unlocked once (the first unlock is timed apart).
* upload: a ~300 MB file through ``S3Store.put_file`` and, as a non-seekable stream, through
  ``S3Store.put_stream``, vs boto3's ``upload_file`` with its defaults, to a local ``moto_server``.
* encrypted full backup (``--tree-gb``, 0 to skip): ``run_backup`` of a generated ERP tree
  (``bench/gen_tree.py``) with ``[encryption] local = true`` (verify before commit off, as
  ``full_none`` in bench_engine) vs ``tar | zstd -T0 -3 | gpg --compress-algo none -e -r FPR`` on
  the same tree. Target: ratio <= 1.2, peak RSS < 150 MB.

Each measurement runs in a fresh child process that reports its wall time (imports and set-up
excluded) and its own peak RSS (the gpg and moto processes are not counted). Medians of
``--repeat`` runs, variants interleaved. Ratio = ours / baseline time.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))

PY = sys.executable
PASSPHRASE = "bench-passphrase"
MIB = 1 << 20


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mb() -> float:
    """Peak RSS of this process since its exec (VmHWM): ``ru_maxrss`` would include the RSS the
    forking parent had."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- children


def child(mode: str, args: dict[str, str]) -> dict[str, float]:
    if mode in ("encrypt", "decrypt"):
        from erp_backup.adapters import crypto
        from erp_backup.adapters.archive.artifact import HashingFile

        home = crypto.GpgHome(Path(args["home"]))
        if mode == "encrypt":
            enc = home.encryptor([args["fpr"]])
            out = Path(args["out"])
            out.unlink(missing_ok=True)
            t0, c0 = time.perf_counter(), cpu_s()
            sink = HashingFile(out)
            stream = enc.wrap(sink)  # type: ignore[arg-type]  # HashingFile is the writer's IO[bytes]
            with open(args["src"], "rb") as f:
                while chunk := f.read(MIB):
                    stream.write(chunk)
            stream.close()
            sink.close()
            return {"s": time.perf_counter() - t0, "rss": rss_mb(), "bytes": sink.size, "cpu": cpu_s() - c0}
        dec = home.decryptor(PASSPHRASE)
        t0, c0 = time.perf_counter(), cpu_s()
        n = 0
        with open(args["src"], "rb") as f:
            r = dec(f)
            while chunk := r.read(MIB):
                n += len(chunk)
            r.close()
        return {"s": time.perf_counter() - t0, "rss": rss_mb(), "bytes": n, "cpu": cpu_s() - c0}
    if mode == "encrypted_full":
        from erp_backup.config import settings_from_dict
        from erp_backup.core.models import BackupKind
        from erp_backup.pipeline import run_backup

        settings = settings_from_dict({
            "project": {"root": args["root"], "key_files": []},
            "database": {"url": f"sqlite:///{args['db']}"},
            "storage": {"local_dir": args["repo"]},
            "backup": {"verify": "none", "lock_wait_s": 0},
            "encryption": {"recipients": [args["fpr"]], "public_keys": args["pub"], "local": True, "sign": False},
        })
        t0, c0 = time.perf_counter(), cpu_s()
        res = run_backup(settings, BackupKind.FULL)
        s, cpu = time.perf_counter() - t0, cpu_s() - c0
        shutil.rmtree(res.path)
        return {"s": s, "rss": rss_mb(), "bytes": res.manifest.size_bytes, "cpu": cpu}
    if mode in ("put_file", "put_stream", "upload_file"):
        from prefect_aws import AwsCredentials, S3Bucket
        from pydantic import SecretStr

        creds = AwsCredentials(aws_access_key_id="bench", aws_secret_access_key=SecretStr("bench"),
                               region_name="us-east-1", aws_client_parameters={"endpoint_url": args["endpoint"]})
        bucket = S3Bucket(bucket_name=args["bucket"], credentials=creds)
        client = creds.get_s3_client()
        key = f"bench/{mode}"
        if mode == "upload_file":
            t0, c0 = time.perf_counter(), cpu_s()
            client.upload_file(args["src"], args["bucket"], key)
            s, cpu = time.perf_counter() - t0, cpu_s() - c0
        else:
            from erp_backup.config import RemoteConfig
            from erp_backup.remote_store import store_for

            # the store the engine builds (remote_store.store_for), with [remote]'s default settings
            store = store_for(bucket, RemoteConfig(block="bench", prefix="bench"))
            if mode == "put_file":
                t0, c0 = time.perf_counter(), cpu_s()
                store.put_file(mode, Path(args["src"]))
                s, cpu = time.perf_counter() - t0, cpu_s() - c0
            else:
                with open(args["src"], "rb") as f:
                    t0, c0 = time.perf_counter(), cpu_s()
                    store.put_stream(mode, _NonSeekable(f))  # type: ignore[arg-type]  # any readable
                    s, cpu = time.perf_counter() - t0, cpu_s() - c0
        size = client.head_object(Bucket=args["bucket"], Key=key)["ContentLength"]
        client.delete_object(Bucket=args["bucket"], Key=key)  # moto keeps objects in memory
        return {"s": s, "rss": rss_mb(), "bytes": size, "cpu": cpu}
    raise SystemExit(f"unknown mode {mode}")


class _NonSeekable:
    def __init__(self, f: object) -> None:
        self._f = f

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)  # type: ignore[attr-defined, no-any-return]


def run_child(mode: str, **args: str) -> dict[str, float]:
    res = subprocess.run([PY, __file__, "--child", mode, json.dumps(args)], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def timed(argv: list[str], stdin_text: str | None = None, stdout: int | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, input=stdin_text.encode() if stdin_text else None, stdout=stdout,
                   stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- set-up


def make_keys(work: Path) -> tuple[Path, str]:
    home = work / "gnupg"
    home.mkdir(mode=0o700)
    params = ("Key-Type: eddsa\nKey-Curve: ed25519\nSubkey-Type: ecdh\nSubkey-Curve: cv25519\n"
              f"Name-Real: Bench\nName-Email: bench@example.invalid\nExpire-Date: 0\nPassphrase: {PASSPHRASE}\n"
              "%commit\n")
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--gen-key"],
                   input=params.encode(), capture_output=True, check=True)
    out = subprocess.run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys"], capture_output=True,
                         text=True, check=True).stdout
    fpr = next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))
    return home, fpr


def make_zst(path: Path, mb: int) -> None:
    """~``mb`` MB of zstd output: ERP-like text and already-compressed blobs, through zstd -T0 -3."""
    import random

    rnd = random.Random(7)
    zstd = subprocess.Popen(["zstd", "-q", "-T0", "-3", "-o", str(path), "-f"], stdin=subprocess.PIPE)
    assert zstd.stdin is not None
    text = "".join(f"{i};ACME-{rnd.randint(0, 99999)};invoice {rnd.random():.6f};paid\n"
                   for i in range(20000)).encode()
    written = 0
    while written < mb * MIB:
        zstd.stdin.write(os.urandom(3 * MIB))
        zstd.stdin.write(text)
        written += 3 * MIB + len(text) // 6  # text compresses ~6x
    zstd.stdin.close()
    if zstd.wait() != 0:
        raise SystemExit("zstd failed")


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = Path(PY).parent / "moto_server"
    proc = subprocess.Popen([str(binary) if binary.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def encrypted_full(work: Path, home: Path, fpr: str, size_gb: float, repeat: int,
                   res: dict[str, list[dict[str, float]]]) -> float:
    """The encrypted full backup vs ``tar | zstd -T0 -3 | gpg -e`` on one generated tree; its MB."""
    sys.path.insert(0, str(HERE))
    from gen_tree import DB_NAME, EXCLUDES, generate

    root = work / "tree"
    info = generate(root, size_gb=size_gb, files=max(1000, int(18000 * size_gb)), verbose=False)
    pub = work / "pub.asc"
    pub.write_bytes(subprocess.run(["gpg", "--homedir", str(home), "--armor", "--export", fpr], capture_output=True,
                                   check=True).stdout)
    excludes = [f"--exclude={p}" for p in EXCLUDES] + [f"--exclude=./{DB_NAME}{x}" for x in ("", "-wal", "-shm")]
    tree_mb = int(str(info["bytes"])) / MIB  # the kept files (what both sides archive)
    base_out = work / "tree.tar.zst.gpg"
    for _ in range(repeat):
        base_out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        tar = subprocess.Popen(["tar", "-C", str(root), *excludes, "-cf", "-", "."], stdout=subprocess.PIPE)
        zstd = subprocess.Popen(["zstd", "-q", "-T0", "-3"], stdin=tar.stdout, stdout=subprocess.PIPE)
        gpg = subprocess.Popen(["gpg", "--homedir", str(home), "--batch", "--no-tty", "--trust-model", "always",
                                "--compress-algo", "none", "-e", "-r", fpr, "-o", str(base_out)], stdin=zstd.stdout)
        assert tar.stdout is not None and zstd.stdout is not None
        tar.stdout.close()
        zstd.stdout.close()
        if gpg.wait() or zstd.wait() or tar.wait():
            raise SystemExit("tar | zstd | gpg failed")
        res.setdefault("full/tar|zstd|gpg", []).append({"s": time.perf_counter() - t0, "rss": 0})
        res.setdefault("full/encrypted", []).append(run_child(
            "encrypted_full", root=str(root), db=str(root / DB_NAME), repo=str(work / "repo"), fpr=fpr,
            pub=str(pub)))
    base_out.unlink(missing_ok=True)
    return tree_mb


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--enc-mb", type=int, default=500)
    ap.add_argument("--upload-mb", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--tree-gb", type=float, default=0.5, help="tree of the encrypted full backup (0: skip it)")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], json.loads(a.child[1]))))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-offsite-", dir=a.workdir))
    moto: subprocess.Popen[bytes] | None = None
    tree_mb = 0.0
    try:
        home, fpr = make_keys(work)
        src = work / "data.tar.zst"
        make_zst(src, a.enc_mb)
        size_mb = src.stat().st_size / MIB
        version = subprocess.run(["gpg", "--version"], capture_output=True, text=True).stdout.split()[2]
        print(f"zstd stream: {size_mb:.0f} MiB; gpg {version}")
        gpg = ["gpg", "--homedir", str(home), "--batch", "--no-tty"]
        ours_out, base_out = work / "ours.gpg", work / "base.gpg"
        # first unlock of the private key (the agent converts and caches nothing: ttl as in gpg_home)
        (home / "gpg-agent.conf").write_text("default-cache-ttl 0\nmax-cache-ttl 0\n")
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=True)
        small = work / "small.gpg"
        subprocess.run([*gpg, "--trust-model", "always", "-e", "-r", fpr, "-o", str(small)], input=b"x", check=True)
        t_unlock = timed([*gpg, "--pinentry-mode", "loopback", "--passphrase-fd", "0", "-d", str(small)],
                         PASSPHRASE + "\n", subprocess.DEVNULL)

        res: dict[str, list[dict[str, float]]] = {}
        for _ in range(a.repeat):
            base_out.unlink(missing_ok=True)
            s = timed([*gpg, "--trust-model", "always", "--compress-algo", "none", "-e", "-r", fpr,
                       "-o", str(base_out), str(src)])
            res.setdefault("encrypt/gpg", []).append({"s": s, "rss": 0})
            res.setdefault("encrypt/ours", []).append(run_child("encrypt", home=str(home), fpr=fpr, src=str(src),
                                                                out=str(ours_out)))
        enc_mb = ours_out.stat().st_size / MIB
        for _ in range(a.repeat):
            s = timed([*gpg, "--pinentry-mode", "loopback", "--passphrase-fd", "0", "-d", str(base_out)],
                      PASSPHRASE + "\n", subprocess.DEVNULL)
            res.setdefault("decrypt/gpg", []).append({"s": s, "rss": 0})
            t0 = time.perf_counter()  # the same, its output through a pipe (as ours has)
            g = subprocess.Popen([*gpg, "--pinentry-mode", "loopback", "--passphrase-fd", "0", "-d", str(base_out)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            cat = subprocess.Popen(["cat"], stdin=g.stdout, stdout=subprocess.DEVNULL)
            assert g.stdin is not None and g.stdout is not None
            g.stdout.close()
            g.stdin.write(PASSPHRASE.encode() + b"\n")
            g.stdin.close()
            if g.wait() or cat.wait():
                raise SystemExit("gpg -d | cat failed")
            res.setdefault("decrypt/gpg|cat", []).append({"s": time.perf_counter() - t0, "rss": 0})
            res.setdefault("decrypt/ours", []).append(run_child("decrypt", home=str(home), src=str(ours_out)))
        base_out.unlink()
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)

        up = work / "upload.bin"
        with open(ours_out, "rb") as f, open(up, "wb") as g:  # --upload-mb of it, repeated if it is shorter
            for _ in range(a.upload_mb):
                block = f.read(MIB)
                if len(block) < MIB:
                    f.seek(0)
                    block += f.read(MIB - len(block))
                g.write(block)
        ours_out.unlink()
        moto, endpoint = start_moto()
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                     region_name="us-east-1").create_bucket(Bucket="bench")
        for _ in range(a.repeat):
            for mode in ("upload_file", "put_file", "put_stream"):
                res.setdefault(f"upload/{mode}", []).append(run_child(mode, endpoint=endpoint, bucket="bench",
                                                                      src=str(up)))
        if moto is not None:
            moto.terminate()
            moto.wait()
            moto = None
        up.unlink()
        if a.tree_gb > 0:
            tree_mb = encrypted_full(work, home, fpr, a.tree_gb, a.repeat, res)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: (statistics.median(r["s"] for r in v), max(r["rss"] for r in v),
               statistics.median(r.get("cpu", 0) for r in v)) for k, v in res.items()}
    print(f"first unlock of the private key (once per run and home): {t_unlock:.2f} s")
    print(f"{'measurement':<22}{'median s':>10}{'MiB/s':>9}{'peak RSS MiB':>14}{'py CPU s':>10}{'ratio':>8}")
    rows = [("encrypt/gpg", size_mb, None), ("encrypt/ours", size_mb, "encrypt/gpg"),
            ("decrypt/gpg", enc_mb, None), ("decrypt/gpg|cat", enc_mb, "decrypt/gpg"),
            ("decrypt/ours", enc_mb, "decrypt/gpg"),
            ("upload/upload_file", a.upload_mb, None), ("upload/put_file", a.upload_mb, "upload/upload_file"),
            ("upload/put_stream", a.upload_mb, "upload/upload_file")]
    if a.tree_gb > 0:
        rows += [("full/tar|zstd|gpg", tree_mb, None), ("full/encrypted", tree_mb, "full/tar|zstd|gpg")]
    for name, mb, base in rows:
        s, rss, cpu = med[name]
        ratio = f"{s / med[base][0]:.2f}" if base else "1.00"
        shown = f"{rss:.0f}" if rss else "-"
        cpu_shown = f"{cpu:.2f}" if cpu else "-"
        print(f"{name:<22}{s:>10.2f}{mb / s:>9.0f}{shown:>14}{cpu_shown:>10}{ratio:>8}")
    print("ratio = our time / baseline time (encrypt, decrypt: lower is better; upload throughput ratio = 1/ratio)")


if __name__ == "__main__":
    main()
