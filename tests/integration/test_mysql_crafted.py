"""A crafted MySQL dump is data: restore and verification never run a client command it holds.

Every shape is first fed to the real ``mariadb`` client (as the restore did before): where the client
runs it, a marker file appears — so the shape is a real attack. Then ``MysqlAdapter.restore`` (real
MariaDB server) must refuse it in one line, run nothing from that line on, and leave no marker and no
``tee`` output; ``verify_dump`` must report it. Engine level: a committed set whose dump was replaced
(checksums resealed) fails ``verify_committed`` and ``restore``."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from erp_backup.adapters.archive import ArtifactWriter
from erp_backup.adapters.databases.mysql import MysqlAdapter
from erp_backup.adapters.databases.mysql_script import SANDBOX_LINE
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.config import settings_from_dict
from erp_backup.core import manifest as mf
from erp_backup.core.errors import RestoreError
from erp_backup.core.models import Artifact, BackupKind, DatabaseInfo
from erp_backup.pipeline import run_backup
from erp_backup.restore import restore
from erp_backup.verify import verify_committed
from tests.integration.conftest import MY_HOST, MY_PORT, MY_USER, assert_actionable

pytestmark = pytest.mark.integration

HEAD = (b"-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)\n--\n"
        b"/*!40101 SET NAMES utf8mb4 */;\n"
        b"DROP TABLE IF EXISTS `t`;\n"
        b"CREATE TABLE `t` (`id` int(11) NOT NULL, `note` text, PRIMARY KEY (`id`)) ENGINE=InnoDB;\n"
        b"INSERT INTO `t` VALUES (1,'one; \\\\! not a command'),(2,'it''s');\n")
TAIL = b"INSERT INTO `t` VALUES (3,'after');\n-- Dump completed on 2026-11-28  2:00:00\n"

# name -> (payload with {m} = marker path, {f} = a script file, {o} = a tee target; what the error names;
#          whether the mariadb client itself runs it in --batch mode, creating the marker)
SHAPES: dict[str, tuple[bytes, str, bool]] = {
    "shell escape": (b"\\! touch {m}\n", "'\\!' (system)", True),
    "system": (b"system touch {m}\n", "client command 'system", True),
    "system; after a statement": (b"SELECT 1; system touch {m};\n", "client command 'system", True),
    "shell escape after a statement": (b"SELECT 'x'; \\! touch {m}\n", "'\\!' (system)", True),
    "source short": (b"\\. {f}\n", "'\\.' (source)", True),
    "source": (b"source {f}\n", "client command 'source", True),
    "tee": (b"tee {o}\nSELECT 'tee me';\n", "client command 'tee", False),
    "tee short": (b"\\T {o}\nSELECT 'tee me';\n", "'\\T' (tee)", False),
    "pager": (b"pager touch {m}\nSELECT 1;\n", "client command 'pager", False),
    "pager short": (b"\\P touch {m}\nSELECT 1;\n", "'\\P' (pager)", False),
    "comment boundary": (b"/* an innocent\n   comment */ \\! touch {m}\n", "'\\!' (system)", True),
    "executable comment": (b"/*!40101 \\! touch {m} */;\n", "'\\!' (system)", True),
    "after a comment": (b"/* c */ system touch {m};\n", "client command 'system", True),
    "mode trick": (b"SET sql_mode='NO_BACKSLASH_ESCAPES';\nSELECT 'C:\\'; \\! touch {m}\n;\n", "'\\!'", True),
}


def crafted(payload: bytes, *, sandbox: bool = False, crlf: bool = False, bom: bool = False) -> bytes:
    body = (SANDBOX_LINE + b"\n" if sandbox else b"") + HEAD + payload + TAIL
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    return (b"\xef\xbb\xbf" if bom else b"") + body


def fill(payload: bytes, tmp: Path) -> tuple[bytes, Path, Path]:
    marker, out, script = tmp / "MARKER", tmp / "tee.out", tmp / "evil.sql"
    script.write_bytes(b"\\! touch " + str(marker).encode() + b"\nsystem touch " + str(marker).encode() + b"\n")
    return payload.replace(b"{m}", str(marker).encode()).replace(b"{f}", str(script).encode()).replace(
        b"{o}", str(out).encode()), marker, out


def info_for(name: str) -> DatabaseInfo:
    return DatabaseInfo(engine="mysql", database=name, server_version="10.11", dump_tool="mariadb-dump",
                        dump_format="sql", tables={"t": 3})


def client_restore(dump: bytes, database: str, cwd: Path) -> None:
    """What the restore did before: the dump on the stdin of the mariadb client."""
    subprocess.run(["mariadb", "-h", MY_HOST, "-P", str(MY_PORT), "-u", MY_USER, "--batch", "--skip-force",
                    f"--database={database}"], input=dump, capture_output=True, cwd=cwd, timeout=60, check=False)


VARIANTS = {"plain": {}, "crlf": {"crlf": True}}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_crafted_dump_is_refused_and_runs_nothing(shape: str, variant: str, my_db, my_sql, workdir: Path,
                                                    tmp_path: Path) -> None:
    payload, names, client_runs_it = SHAPES[shape]
    filled, marker, out = fill(payload, tmp_path)
    dump = crafted(filled, **VARIANTS[variant])  # type: ignore[arg-type]

    probe = my_db("probe")
    client_restore(dump, probe.name, tmp_path)
    assert marker.exists() == client_runs_it, "the shape does not do what this test says a client does"
    marker.unlink(missing_ok=True)
    out.unlink(missing_ok=True)

    dst = my_db("dst", create=False)
    adapter = MysqlAdapter(dst)
    chunks = [dump[i:i + 7] for i in range(0, len(dump), 7)]
    with pytest.raises(RestoreError) as e:
        adapter.restore(iter(chunks), info_for(dst.name), dst, replace=False, workdir=workdir)
    assert_actionable(e.value, "refusing to restore", names, "no dump tool writes", "another set")
    assert not marker.exists() and not out.exists()
    assert my_sql(dst, "SELECT id FROM t ORDER BY id") == [(1,), (2,)], "ran statements after the command"
    assert list(workdir.iterdir()) == []

    problems = adapter.verify_dump(iter(chunks), info_for(dst.name), workdir)
    assert len(problems) == 1 and names in problems[0] and "tampered" in problems[0], problems
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("how", ["no sandbox line", "sandbox line", "BOM", "CRLF and BOM"])
def test_refused_with_or_without_the_sandbox_line_a_bom_or_crlf(how: str, my_db, workdir: Path, tmp_path: Path) -> None:
    filled, marker, _ = fill(b"system touch {m}\n", tmp_path)
    dump = crafted(filled, sandbox=how == "sandbox line", bom="BOM" in how, crlf="CRLF" in how)
    dst = my_db("sb", create=False)
    adapter = MysqlAdapter(dst)
    with pytest.raises(RestoreError, match="client command 'system"):
        adapter.restore(iter([dump]), info_for(dst.name), dst, replace=False, workdir=workdir)
    assert adapter.verify_dump(iter([dump]), info_for(dst.name), workdir)
    assert not marker.exists()


def test_load_data_local_cannot_read_a_file_of_the_restoring_host(my_db, my_sql, workdir: Path,
                                                                   tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only-secret\n")
    dump = HEAD + f"LOAD DATA LOCAL INFILE '{secret}' INTO TABLE `t` (note);\n".encode() + TAIL
    dst = my_db("infile", create=False)
    with pytest.raises(RestoreError) as e:
        MysqlAdapter(dst).restore(iter([dump]), info_for(dst.name), dst, replace=False, workdir=workdir)
    # refused before it reaches the server now (it was refused by the server, local_infile off)
    assert_actionable(e.value, "refusing to restore", "LOAD DATA")
    assert my_sql(dst, "SELECT COUNT(*) FROM t WHERE note LIKE '%secret%'") == [(0,)]


# ---- through the engine: a committed set whose dump was swapped ------------------------------------


def test_a_set_with_a_swapped_dump_fails_verification_and_restore(my_db, my_sql, tmp_path: Path) -> None:
    src = my_db("engine")
    my_sql(src, "CREATE TABLE t (id INT PRIMARY KEY, note TEXT)")
    my_sql(src, "INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    root = tmp_path / "erp"
    (root / "app").mkdir(parents=True)
    (root / "app" / "models.py").write_text("x = 1\n")
    s = settings_from_dict({"project": {"root": str(root), "key_files": []},
                            "database": {"url": f"mysql://{MY_USER}@{MY_HOST}:{MY_PORT}/{src.name}"},
                            "storage": {"local_dir": str(tmp_path / "backups")}})
    sid = run_backup(s, BackupKind.FULL).manifest.id.value
    repo = LocalRepository(s.storage.local_dir)
    assert verify_committed(repo, sid).ok

    filled, marker, _ = fill(b"\\! touch {m}\n", tmp_path)
    reseal_database(repo.set_dir(sid), crafted(filled, sandbox=True))
    rep = verify_committed(repo, sid)
    assert not rep.ok and any("client command '\\!'" in p for p in rep.problems), rep.problems

    dst = my_db("engine_r", create=False)
    with pytest.raises(RestoreError) as e:
        restore(repo, target_dir=None, backup_id=sid, target_db=dst)
    assert_actionable(e.value, "client command '\\!'")
    assert not marker.exists()


def reseal_database(set_dir: Path, raw: bytes) -> None:
    """Replace the set's database dump and make manifest.json and SHA256SUMS agree with it again,
    as someone who can write the backup disk could."""
    m = mf.loads((set_dir / "manifest.json").read_bytes())
    arts = []
    for a in m.artifacts:
        if a.role == "database":
            path = set_dir / a.name
            path.unlink()
            w = ArtifactWriter(path, level=3, threads=1)
            w.write(raw)
            written = w.close()
            a = replace(a, size=written.size, sha256=written.sha256)
        arts.append(a)
    m = replace(m, artifacts=tuple(arts))
    text = mf.dumps(m).encode()
    (set_dir / "manifest.json").write_bytes(text)
    sums = [*arts, Artifact("manifest.json", "manifest", len(text), hashlib.sha256(text).hexdigest())]
    (set_dir / "SHA256SUMS").write_text(mf.sha256sums(sums))


# statements a dump of one database never holds (a review ran all of these through the restore: they
# wrote to another database and a server file)
CONFINED = {
    "into outfile": b"SELECT 'pwn' INTO OUTFILE '{f}';\n",
    "into dumpfile in an executable comment": b"/*!40101 SELECT 'pwn' INTO DUMPFILE '{f}' */;\n",
    "load data": b"LOAD DATA INFILE '/etc/hostname' INTO TABLE t;\n",
    "load_file": b"INSERT INTO t VALUES (LENGTH(LOAD_FILE('/etc/hostname')));\n",
    "use": b"USE `{v}`;\nINSERT INTO t VALUES (666);\n",
    "create user": b"CREATE USER 'x'@'%' IDENTIFIED BY 'y';\n",
    "grant": b"/*!50001 GRANT ALL ON *.* TO 'x'@'%' */;\n",
    "set global": b"SET GLOBAL general_log = 1;\n",
    "set @@global": b"SET @@global.general_log = 1;\n",
    "drop database": b"DROP DATABASE `{v}`;\n",
    "create database": b"CREATE DATABASE IF NOT EXISTS `evil_db`;\n",
    "install plugin": b"INSTALL SONAME 'ha_blackhole';\n",
}


@pytest.mark.parametrize("shape", sorted(CONFINED))
def test_statements_that_reach_past_the_target_database_are_refused(shape: str, my_db, my_sql, workdir: Path,
                                                                    tmp_path: Path) -> None:
    victim = my_db("victim")
    my_sql(victim, "CREATE TABLE t (id INT)")
    out = tmp_path / "pwn.out"
    payload = CONFINED[shape].replace(b"{v}", victim.name.encode()).replace(b"{f}", str(out).encode())
    dump = crafted(payload)
    dst = my_db("dst", create=False)
    adapter = MysqlAdapter(dst)
    with pytest.raises(RestoreError) as e:
        adapter.restore(iter([dump]), info_for(dst.name), dst, replace=False, workdir=workdir)
    why = "client command 'USE" if shape == "use" else "reaches beyond the restored database"
    assert_actionable(e.value, "refusing to restore", why)
    assert my_sql(victim, "SELECT COUNT(*) FROM t") == [(0,)] and not out.exists()
    assert my_sql(None, "SELECT COUNT(*) FROM mysql.user WHERE user = 'x'") == [(0,)]
    assert my_sql(None, "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'evil_db'") == [(0,)]
    problems = adapter.verify_dump(iter([dump]), info_for(dst.name), workdir)
    assert len(problems) == 1 and why in problems[0], problems


# dumps whose hidden client command a bare client would run, that the verification's SQL-mode
# tracker once read as harmless strings (found by a review; our own restore refused both already)
TRACKER_TRICKS = {
    "mode change the server skips": (b"/*!999999 SET sql_mode='NO_BACKSLASH_ESCAPES' */;\n"
                                     b"SELECT 'a\\' , '\\! touch {m} #';\n"),
    "saved mode overwritten by a select": (b"SET @m=@@sql_mode;\nSELECT @m := 'NO_BACKSLASH_ESCAPES';\n"
                                           b"SET sql_mode=@m;\nSELECT 'a\\';\n\\! touch {m} #'\n;\n"),
}


@pytest.mark.parametrize("shape", sorted(TRACKER_TRICKS))
def test_verification_is_not_fooled_by_sql_mode_tricks(shape: str, my_db, workdir: Path, tmp_path: Path) -> None:
    filled, marker, _ = fill(TRACKER_TRICKS[shape], tmp_path)
    dump = crafted(filled)
    dst = my_db("trick", create=False)
    problems = MysqlAdapter(dst).verify_dump(iter([dump]), info_for(dst.name), workdir)
    assert len(problems) == 1 and "tampered" in problems[0], problems
    with pytest.raises(RestoreError):
        MysqlAdapter(dst).restore(iter([dump]), info_for(dst.name), dst, replace=False, workdir=workdir)
    assert not marker.exists()


# table options that make the server write the table's files in a directory the dump names: no FILE
# privilege needed, so the confined account could (a review had t.ibd, x.MYD and x.MYI created in /tmp)
DIRECTORIES = {
    "innodb data directory": b"CREATE TABLE d (id INT) ENGINE=InnoDB DATA DIRECTORY='{d}';\n",
    "myisam data and index directory": (b"CREATE TABLE d (id INT) ENGINE=MyISAM DATA DIRECTORY='{d}' "
                                        b"INDEX DIRECTORY='{d}';\n"),
    "in an executable comment": b"CREATE TABLE d (id INT) ENGINE=MyISAM /*!50100 DATA DIRECTORY = '{d}' */;\n",
    "split by a comment": b"CREATE TABLE d (id INT) ENGINE=MyISAM INDEX/* x */DIRECTORY '{d}';\n",
    "partition": (b"CREATE TABLE d (id INT) ENGINE=InnoDB PARTITION BY HASH (id) "
                  b"(PARTITION p0 DATA DIRECTORY = '{d}');\n"),
}


def _refused_writing_nothing(my_db, workdir: Path, body: Callable[[str], bytes], why: str) -> None:
    """The dump ``body(dir)`` names a directory the server can write (as /tmp or /var/tmp are):
    restore refuses it with ``why``, verify reports it, and nothing appears in that directory."""
    import shutil
    import tempfile

    outside = Path(tempfile.mkdtemp(prefix="erp-backup-outside-", dir="/tmp"))
    try:
        outside.chmod(0o777)
        dump = crafted(body(str(outside)))
        dst = my_db("dst", create=False)
        adapter = MysqlAdapter(dst)
        with pytest.raises(RestoreError) as e:
            adapter.restore(iter([dump]), info_for(dst.name), dst, replace=False, workdir=workdir)
        assert_actionable(e.value, "refusing to restore", why)
        assert [p.name for p in outside.rglob("*")] == []
        problems = adapter.verify_dump(iter([dump]), info_for(dst.name), workdir)
        assert len(problems) == 1 and why in problems[0], problems
    finally:
        shutil.rmtree(outside, ignore_errors=True)


@pytest.mark.parametrize("shape", sorted(DIRECTORIES))
def test_a_dump_cannot_place_table_files_outside_the_data_directory(shape: str, my_db, workdir: Path) -> None:
    _refused_writing_nothing(my_db, workdir, lambda d: DIRECTORIES[shape].replace(b"{d}", d.encode()),
                             "reaches beyond the restored database")


# a client character set whose multi-byte characters end in a backslash (0x5C): the server then ends a
# string where the splitter, reading bytes, does not, and what the server runs next was read as string
# contents by every check (a review hid a DATA DIRECTORY clause so: restored, files written, verified)
HIDDEN = b"CREATE TABLE x (a VARCHAR(10) DEFAULT '{lead}\\' ) ENGINE=MyISAM DATA DIRECTORY='{d}' -- '\n;\n"
CHARSET_TRICKS = {
    "set names gbk": (b"SET NAMES gbk;\n", b"\xbf"),
    "sjis in an executable comment": (b"/*!40101 SET NAMES sjis */;\n", b"\x95"),
    "big5 through a user variable": (b"SET @cs = 'big5';\nSET character_set_client = @cs;\n", b"\xa5"),
    "gbk with an introducer": (b"SET character_set_client = _latin1'gbk';\n", b"\xbf"),
}


@pytest.mark.parametrize("shape", sorted(CHARSET_TRICKS))
def test_a_charset_that_hides_a_quote_from_the_splitter_is_refused(shape: str, my_db, workdir: Path) -> None:
    switch, lead = CHARSET_TRICKS[shape]
    _refused_writing_nothing(my_db, workdir,
                             lambda d: switch + HIDDEN.replace(b"{lead}", lead).replace(b"{d}", d.encode()),
                             "client character set")
