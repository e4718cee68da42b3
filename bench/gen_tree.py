"""Generate a deterministic, ERP-like Django deployment tree for the benchmarks.

    .venv/bin/python bench/gen_tree.py DIR [--size-gb 1.0] [--files 18000] [--seed 1]

What it makes (sizes scale with ``--size-gb``, counts with ``--files``):

* ``--files`` regular files that a backup keeps (after the default exclusions):
  - ~93 % small text files (.py, .html, .json, .js, .css, .po, .txt, .md; lognormal,
    median ~3 KB) and a few small binary ones (.png/.ico);
  - ~7 % "documents" of 64 KB-6 MB: PDFs (mostly incompressible streams with some text),
    xlsx/docx-like zips (incompressible) and CSV/log exports (text);
  - a dozen large files (log archives, data exports, attachment bundles) that fill the
    byte budget and are mixed so that about 43 % of all bytes are incompressible.
  Text is built from a Zipf-weighted vocabulary with numbers and code/markup/data line
  shapes: zstd -3 packs it ~3-5x; binaries do not compress. Overall tar|zstd -3 output is
  ~55-60 % of the input (the field notes' tree: 1.22 GB -> 697 MB).
* junk the default exclusions leave out: venv/, node_modules/, __pycache__/*.pyc,
  media/, staticfiles/ (about 20 % on top of the kept bytes);
* ``db.sqlite3`` (a few MB, auto-excluded from the file archive, dumped by the engine),
  ``.env`` and ``manage.py`` (the default key files).

Everything is derived from ``--seed``: the same arguments give the same bytes.
``tree.json`` beside the tree lists the kept files (path, size) for the change step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

RANDOM_FRACTION = 0.43  # share of kept bytes that is incompressible
EXCLUDES = ["*.pyc", "__pycache__", "venv", ".venv", "node_modules", "staticfiles", "media"]
DB_NAME = "db.sqlite3"

_SYL = ["ac", "al", "an", "ar", "be", "ca", "co", "de", "di", "en", "er", "es", "ga", "in", "is", "ka",
        "lo", "ma", "me", "mi", "na", "ne", "no", "or", "pa", "po", "ra", "re", "ri", "ro", "sa", "se",
        "si", "ta", "te", "ti", "to", "tu", "un", "ur", "va", "ve", "vo", "za", "qu", "th", "st", "pr"]


def _vocab(rng: random.Random, n: int = 4000) -> tuple[list[str], list[float]]:
    words = sorted({"".join(rng.choices(_SYL, k=rng.choice((1, 2, 2, 3, 3, 4)))) for _ in range(n * 2)})[:n]
    rng.shuffle(words)
    weights = [1.0 / (i + 1) ** 1.05 for i in range(len(words))]  # Zipf-like
    return words, weights


def _pool(rng: random.Random, flavor: str, size: int, words: list[str], weights: list[float]) -> bytes:
    """A block of text in one flavor ('code', 'markup', 'data', 'prose')."""
    out: list[str] = []
    total = 0
    batch = rng.choices(words, weights, k=200_000)
    bi = 0

    def w(k: int) -> list[str]:
        nonlocal bi, batch
        if bi + k > len(batch):
            batch = rng.choices(words, weights, k=200_000)
            bi = 0
        r = batch[bi:bi + k]
        bi += k
        return r

    while total < size:
        if flavor == "code":
            ind = "    " * rng.choice((0, 1, 1, 2, 2, 3))
            kind = rng.random()
            a = w(4)
            if kind < 0.15:
                line = f"{ind}def {a[0]}_{a[1]}(self, {a[2]}, {a[3]}={rng.randint(0, 999)}):"
            elif kind < 0.25:
                line = f'{ind}"""{" ".join(w(rng.randint(3, 10))).capitalize()}."""'
            elif kind < 0.35:
                line = f"{ind}{a[0]} = models.{a[1].capitalize()}Field(max_length={rng.randint(8, 512)})"
            elif kind < 0.45:
                line = f"{ind}# {' '.join(w(rng.randint(3, 12)))}"
            elif kind < 0.55:
                line = f"{ind}if {a[0]}.{a[1]} {rng.choice(('==', '!=', '>', '<'))} {rng.randint(0, 10**5)}:"
            else:
                line = f"{ind}{a[0]}.{a[1]} = {a[2]}({a[3]}, {rng.random():.4f})"
        elif flavor == "markup":
            a = w(3)
            tag = rng.choice(("div", "span", "td", "li", "p", "a", "th"))
            line = (f'{"  " * rng.randint(0, 5)}<{tag} class="{a[0]}-{a[1]}" id="{a[2]}{rng.randint(0, 9999)}">'
                    f'{{% trans "{" ".join(w(rng.randint(1, 6)))}" %}}</{tag}>')
        elif flavor == "data":
            a = w(3)
            line = (f'  {{"id": {rng.randint(1, 10**7)}, "{a[0]}": "{a[1]} {a[2]}", "amount": '
                    f'{rng.randint(0, 10**6) / 100:.2f}, "date": "2025-{rng.randint(1, 12):02d}-'
                    f'{rng.randint(1, 28):02d}", "qty": {rng.randint(0, 500)}}},')
        else:
            line = " ".join(w(rng.randint(6, 16))).capitalize() + rng.choice((".", ".", ",", ";", ":"))
        out.append(line)
        total += len(line) + 1
    return ("\n".join(out) + "\n").encode()[:size]


class TextSource:
    """Per-flavor pools; a file's text is a run of random slices (unique per file, fast)."""

    def __init__(self, rng: random.Random, pool_mb: int) -> None:
        words, weights = _vocab(rng)
        size = pool_mb * 1024 * 1024 // 4
        self.pools = {f: _pool(rng, f, size, words, weights) for f in ("code", "markup", "data", "prose")}
        self.rng = rng

    def text(self, flavor: str, n: int, header: str = "") -> bytes:
        pool = self.pools[flavor]
        parts = [header.encode()]
        left = n - len(parts[0])
        while left > 0:
            k = min(left, self.rng.randint(512, 16384))
            off = self.rng.randrange(0, len(pool) - k)
            parts.append(pool[off:off + k])
            left -= k
        return b"".join(parts)[:n]


def _lognormal(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, rng.lognormvariate(math.log(median), sigma))))


SMALL_KINDS = [  # (extension, flavor or None for binary, weight, sub-directory)
    ("py", "code", 34, "apps/{app}/{mod}"),
    ("html", "markup", 18, "apps/{app}/templates/{app}"),
    ("json", "data", 10, "apps/{app}/fixtures"),
    ("js", "code", 9, "apps/{app}/static/{app}/js"),
    ("css", "markup", 5, "apps/{app}/static/{app}/css"),
    ("po", "prose", 5, "locale/{lang}/LC_MESSAGES/{app}"),
    ("txt", "prose", 5, "docs/{app}"),
    ("md", "prose", 4, "docs/{app}"),
    ("yaml", "data", 3, "config/{app}"),
    ("png", None, 5, "apps/{app}/static/{app}/img"),
    ("ico", None, 2, "apps/{app}/static/{app}/img"),
]
MODS = ["models", "views", "admin", "serializers", "forms", "services", "tasks", "api", "tests", "utils"]
LANGS = ["en", "de", "fr", "es", "zh_Hans", "ja", "pt_BR", "it"]


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _binary(rng: random.Random, n: int, text_src: TextSource | None = None, text_share: float = 0.0,
            head: bytes = b"") -> bytes:
    """Incompressible bytes, optionally with interleaved text blocks (text_share of n)."""
    if text_src is None or text_share <= 0:
        return (head + rng.randbytes(max(0, n - len(head))))[:n]
    parts = [head]
    left = n - len(head)
    while left > 0:
        k = min(left, rng.randint(64 * 1024, 1024 * 1024))
        if rng.random() < text_share:
            parts.append(text_src.text(rng.choice(("prose", "data")), k))
        else:
            parts.append(rng.randbytes(k))
        left -= k
    return b"".join(parts)[:n]


def generate(root: Path, size_gb: float = 1.0, files: int = 18000, seed: int = 1, junk: bool = True,
             verbose: bool = True) -> dict[str, object]:
    t0 = time.monotonic()
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise SystemExit(f"{root} is not empty")
    budget = int(size_gb * 1e9)
    src = TextSource(rng, pool_mb=32)
    kept: list[tuple[str, int]] = []
    rnd_bytes = 0

    def keep(rel: str, data: bytes, random_part: int, mode: int = 0o644) -> None:
        nonlocal rnd_bytes
        _write(root / rel, data, mode)
        kept.append((rel, len(data)))
        rnd_bytes += random_part

    # fixed project files
    db = root / DB_NAME
    keep(".env", f"SECRET_KEY=bench-{seed}-not-a-secret\nDATABASE_URL=sqlite:///{db}\nDEBUG=0\n".encode(), 0,
         0o600)
    keep("manage.py", b"#!/usr/bin/env python\nimport os, sys\n# django manage.py\n", 0, 0o755)
    for name in ("__init__.py", "settings.py", "urls.py", "wsgi.py", "asgi.py", "celery.py"):
        keep(f"django_erp/{name}", src.text("code", rng.randint(200, 6000), f'"""django_erp.{name}"""\n'), 0)
    keep("requirements.txt", src.text("prose", 2500), 0)

    n_large = max(4, round(12 * size_gb))
    n_medium = int(files * 0.07)
    n_small = files - n_medium - n_large - len(kept)
    n_apps = max(8, files // 600)
    names = ("sales", "stock", "ledger", "hr", "crm", "pos", "mrp", "bi") * 99
    apps = [f"{a}{i}" for i, a in enumerate(names)][:n_apps]
    weights = [k[2] for k in SMALL_KINDS]
    for i in range(n_small):
        ext, flavor, _, sub = rng.choices(SMALL_KINDS, weights)[0]
        app = rng.choice(apps)
        d = sub.format(app=app, mod=rng.choice(MODS), lang=rng.choice(LANGS))
        rel = f"{d}/{rng.choice(MODS)}_{i}.{ext}"
        if flavor is None:
            n = _lognormal(rng, 4000, 1.0, 100, 200_000)
            keep(rel, _binary(rng, n, head=b"\x89PNG\r\n\x1a\n"), n)
        else:
            n = _lognormal(rng, 3000, 1.1, 60, 256_000)
            keep(rel, src.text(flavor, n, f"# {rel}\n" if flavor == "code" else ""), 0)
    small_total = sum(s for _, s in kept)

    # medium documents: about 45 % of the budget
    med_sizes = [_lognormal(rng, 350_000, 0.9, 64_000, 6_000_000) for _ in range(n_medium)]
    scale = 0.45 * budget / max(1, sum(med_sizes))
    med_sizes = [max(16_000, int(s * scale)) for s in med_sizes]
    for i, n in enumerate(med_sizes):
        r = rng.random()
        year = 2019 + i % 7
        if r < 0.45:
            rel = f"documents/invoices/{year}/{i % 12 + 1:02d}/INV-{year}-{i:06d}.pdf"
            data = _binary(rng, n, src, 0.10, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
            keep(rel, data, int(n * 0.9))
        elif r < 0.70:
            ext = rng.choice(("xlsx", "docx", "odt"))
            rel = f"documents/reports/{year}/report-{i:06d}.{ext}"
            keep(rel, _binary(rng, n, head=b"PK\x03\x04\x14\x00\x06\x00"), n)
        else:
            ext = rng.choice(("csv", "log", "xml"))
            rel = f"exports/{year}/export-{i:06d}.{ext}"
            keep(rel, src.text("data", n), 0)

    # large files fill the budget and balance the incompressible share
    used = sum(s for _, s in kept)
    left = max(n_large * 1_000_000, budget - used)
    rnd_share = min(1.0, max(0.0, (RANDOM_FRACTION * (used + left) - rnd_bytes) / left))
    lw = [rng.uniform(0.5, 1.5) for _ in range(n_large)]
    lsizes = [int(left * x / sum(lw)) for x in lw]
    for i, n in enumerate(lsizes):
        kind = ("var/log/archive/app-{i}.log", "exports/bulk/erp-export-{i}.dat",
                "documents/bundles/attachments-{i}.bin")[i % 3]
        data = _binary(rng, n, src, 1.0 - rnd_share)
        keep(kind.format(i=i), data, int(n * rnd_share))

    # the SQLite database (auto-excluded from the archive; dumped by the engine)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE sales_order (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT)")
    conn.execute("CREATE TABLE stock_move (id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER, ref TEXT)")
    pool = src.pools["prose"]
    conn.executemany("INSERT INTO sales_order VALUES (?,?,?,?)",
                     ((i, f"C{rng.randint(1, 5000)}", rng.randint(0, 10**6) / 100,
                       pool[(o := rng.randrange(0, len(pool) - 200)):o + rng.randint(20, 200)].decode(errors="ignore"))
                      for i in range(1, int(40_000 * max(size_gb, 0.05)))))
    conn.executemany("INSERT INTO stock_move VALUES (?,?,?,?)",
                     ((i, f"SKU-{rng.randint(1, 20000):05d}", rng.randint(-50, 50), f"REF{i}")
                      for i in range(1, int(60_000 * max(size_gb, 0.05)))))
    conn.commit()
    conn.close()

    junk_files = junk_bytes = 0
    if junk:
        def junkw(rel: str, data: bytes) -> None:
            nonlocal junk_files, junk_bytes
            _write(root / rel, data)
            junk_files += 1
            junk_bytes += len(data)

        jn = max(50, files // 6)
        for i in range(jn):  # venv
            junkw(f"venv/lib/python3.11/site-packages/pkg{i % 97}/mod_{i}.py",
                  src.text("code", _lognormal(rng, 4000, 1.0, 100, 100_000)))
        for i in range(jn):  # node_modules
            junkw(f"node_modules/lib{i % 113}/dist/index_{i}.js",
                  src.text("code", _lognormal(rng, 3000, 1.0, 80, 80_000)))
        for rel, _ in list(kept):  # bytecode next to some modules
            if rel.endswith(".py") and rng.random() < 0.3:
                p = Path(rel)
                junkw(str(p.parent / "__pycache__" / f"{p.stem}.cpython-311.pyc"),
                      rng.randbytes(rng.randint(200, 20_000)))
        for i in range(max(10, files // 120)):  # media uploads (binary)
            junkw(f"media/uploads/{2020 + i % 5}/scan-{i}.jpg",
                  rng.randbytes(_lognormal(rng, 500_000, 0.8, 20_000, 4_000_000)))
        for i in range(max(20, files // 40)):  # collected static files
            junkw(f"staticfiles/{rng.choice(apps)}/app-{i}.css",
                  src.text("markup", _lognormal(rng, 4000, 1.0, 100, 60_000)))

    kept_bytes = sum(s for _, s in kept)
    info = {
        "root": str(root), "seed": seed, "size_gb": size_gb, "files": len(kept), "bytes": kept_bytes,
        "small_bytes": small_total, "random_share": round(rnd_bytes / max(1, kept_bytes), 3),
        "junk_files": junk_files, "junk_bytes": junk_bytes, "db": str(db), "db_bytes": db.stat().st_size,
        "gen_s": round(time.monotonic() - t0, 1),
    }
    (root.parent / f"{root.name}.tree.json").write_text(json.dumps({**info, "kept": kept}))
    if verbose:
        print(f"generated {root}: {len(kept)} files, {kept_bytes / 1e9:.2f} GB kept "
              f"({info['random_share']:.0%} incompressible), {junk_files} junk files "
              f"({junk_bytes / 1e6:.0f} MB), db {info['db_bytes'] / 1e6:.1f} MB in {info['gen_s']} s", file=sys.stderr)
    return info


def kept_files(root: Path) -> list[tuple[str, int]]:
    data = json.loads((root.parent / f"{root.name}.tree.json").read_text())
    return [(p, s) for p, s in data["kept"]]


def mutate(root: Path, fraction: float = 0.01, seed: int = 2) -> dict[str, int]:
    """Change ~``fraction`` of the kept files (by count) and ~``fraction`` of the bytes.

    Small files get a line appended; documents get rewritten with new bytes (same size)
    until the byte share is reached. Large files are left alone."""
    rng = random.Random(seed)
    files = [(p, s) for p, s in kept_files(root) if p not in (".env", "manage.py")]
    total = sum(s for _, s in files)
    small = [f for f in files if f[1] < 64_000]
    medium = [f for f in files if 64_000 <= f[1] < 20_000_000]
    n_target = max(1, int(len(files) * fraction))
    b_target = int(total * fraction)
    changed = nbytes = 0
    for p, s in rng.sample(medium, len(medium)):
        if nbytes >= b_target * 0.9 or changed >= n_target // 2:
            break
        path = root / p
        with open(path, "r+b") as f:
            f.seek(rng.randrange(0, max(1, s - 4096)))
            f.write(rng.randbytes(min(4096, s)))
        changed += 1
        nbytes += s
    for p, s in rng.sample(small, min(len(small), max(0, n_target - changed))):
        with open(root / p, "ab") as f:
            f.write(f"\n# edited {rng.random():.6f}\n".encode())
        changed += 1
        nbytes += s
    return {"files": changed, "bytes": nbytes, "of_files": len(files), "of_bytes": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=18000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-junk", action="store_true")
    a = ap.parse_args()
    generate(a.dir, a.size_gb, a.files, a.seed, junk=not a.no_junk)


if __name__ == "__main__":
    main()
