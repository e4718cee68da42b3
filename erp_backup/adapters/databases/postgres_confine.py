"""A PostgreSQL restore runs with the rights of the target database only.

``pg_restore`` executes the SQL a custom-format dump's table of contents holds; a crafted dump can
hold anything (``COPY … TO PROGRAM``, ``ALTER SYSTEM``, ``CREATE EXTENSION``, ``SET ROLE``,
functions in untrusted languages…). So the configured user (often the superuser) only prepares:

* the *owner role* of the target database, ``erpb_owner_<sha256(name)[:12]>``: NOLOGIN, no
  attribute (not superuser, no CREATEDB/CREATEROLE/REPLICATION/BYPASSRLS), member of nothing. It
  owns the target database and everything restored into it, so a view or SECURITY DEFINER function
  from the dump runs later with its rights, never a superuser's. A configured user that is not a
  superuser is made a member (it keeps using and replacing what it restores);
* a *temporary login role* ``erpb_restore_<time>_<random>`` (random password sent as a SCRAM
  verifier, valid one day, NOINHERIT, member of the owner role only). ``pg_restore`` logs in as it
  with ``--role=<owner>``: ``RESET ROLE`` in the dump leads back to a role with no rights at all.

The temporary role is dropped after the restore (objects it came to own reassigned to the owner
role). A restore killed (SIGKILL) before that leaves it behind: every restore first drops the
``erpb_restore_*`` roles whose advisory lock (held by the creating session while it lives,
released by the server when the process dies) is free.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.errors
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from erp_backup.adapters.databases.common import log, one_line
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import RestoreError

TEMP_PREFIX = "erpb_restore_"
OWNER_PREFIX = "erpb_owner_"
LOCK_SPACE = 0x65726270  # first key of the advisory locks ("erbp"); the second: hashtext(role name)
_ATTRIBUTES = ("rolsuper", "rolcanlogin", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")

OpenDb = Callable[[str], Connection]  # a connection as the configured user to the named database


@dataclass(frozen=True)
class Confined:
    login: DatabaseUrl  # the target, logged in as the temporary role (or as the configured user)
    owner: str | None  # the owner role: pg_restore --role; None: the configured user's own rights


def owner_role(database: str) -> str:
    return OWNER_PREFIX + hashlib.sha256(database.encode("utf-8")).hexdigest()[:12]


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores: the password itself never reaches the server
    (nor a statement log). ``password`` is ASCII (SASLprep leaves it as it is)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def _rows(conn: Connection, query: str | sql.Composable, args: tuple[object, ...] | None = None
          ) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, args)
        return list(cur.fetchall()) if cur.description else []


@contextmanager
def confined_role(admin: Connection, target: DatabaseUrl, open_db: OpenDb) -> Iterator[Confined]:
    """Yield the login of a temporary role confined to the target database (``admin``, autocommit,
    must stay open meanwhile: it holds the role's lock); drop the role after."""
    drop_stale_roles(admin, open_db)
    drop_unused_owner_roles(admin)
    refused = ""
    user = f"{TEMP_PREFIX}{int(time.time()):08x}_{secrets.token_hex(4)}"
    try:
        password = secrets.token_urlsafe(24)
        _rows(admin, "SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, user))
        until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        _rows(admin, "BEGIN")  # the owner role is never seen without its member (drop_unused_owner_roles)
        try:
            owner = ensure_owner_role(admin, target.name)
            _rows(admin, sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                 "NOBYPASSRLS NOINHERIT PASSWORD %s VALID UNTIL %s IN ROLE {}").format(
                sql.Identifier(user), sql.Identifier(owner)), (scram_verifier(password), until))
            _rows(admin, "COMMIT")
        except BaseException:
            _rows(admin, "ROLLBACK")
            raise
    except psycopg2.errors.InsufficientPrivilege as e:  # no CREATEROLE: not a superuser either
        refused = one_line(str(e), target.secrets())
    except psycopg2.Error as e:
        raise RestoreError(f"cannot create the temporary role that restores database '{target.name}' with the "
                           f"rights of that database only: {one_line(str(e), target.secrets())}",
                           hint="look at the PostgreSQL server log, then restore again") from None
    if refused:
        _rows(admin, "SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_SPACE, user))
        log.warning("restoring database '%s' with the rights of the configured user, not of that database "
                    "only: it cannot create the temporary role that would confine it (%s). A crafted dump can do "
                    "whatever that user may; restore as a superuser or a user with CREATEROLE to confine it",
                    target.name, refused)
        yield Confined(target, None)
        return
    try:
        yield Confined(replace(target, user=user, password=password, password_as_written=""), owner)
    finally:
        drop_role(admin, user, open_db, owner)
        try:
            _rows(admin, "SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_SPACE, user))
        except psycopg2.Error:
            pass  # closing the session releases it


def ensure_owner_role(admin: Connection, database: str) -> str:
    """The owner role of ``database``, created if missing; refused if someone gave it rights."""
    owner = owner_role(database)
    found = _rows(admin, f"SELECT {', '.join(_ATTRIBUTES)} FROM pg_roles WHERE rolname = %s", (owner,))
    if not found:
        _rows(admin, sql.SQL("CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                             "NOBYPASSRLS").format(sql.Identifier(owner)))
    else:
        granted = [name[3:] for name, on in zip(_ATTRIBUTES, found[0], strict=True) if on]
        member_of = [str(r[0]) for r in _rows(
            admin, "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                   "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s", (owner,))]
        if granted or member_of:
            what = ", ".join([*(a.upper() for a in granted), *(f"member of {g}" for g in member_of)])
            raise RestoreError(f"the owner role {owner} of database '{database}' has rights it must not have "
                               f"({what})", hint=f"REVOKE them (ALTER ROLE {owner} NOLOGIN NOSUPERUSER …) or "
                               f"DROP ROLE {owner} after reassigning what it owns, then restore again")
    if not _rows(admin, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0][0]:
        if not _rows(admin, "SELECT pg_has_role(current_user, %s, 'MEMBER')", (owner,))[0][0]:
            _rows(admin, sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(owner)))
    return owner


def drop_role(admin: Connection, user: str, open_db: OpenDb, owner: str | None = None) -> bool:
    """End the sessions of ``user``, hand what it owns to ``owner`` (its owner role), drop it."""
    try:
        _rows(admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (user,))
        if owner is None:
            roles = _rows(admin, "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
                                 "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s", (user,))
            owner = str(roles[0][0]) if roles else None
        databases = _rows(admin, "SELECT DISTINCT d.datname FROM pg_shdepend s "
                                 "JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.refobjid "
                                 "WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = %s", (user,))
        for (name,) in databases:
            with closing(open_db(str(name))) as conn:
                conn.autocommit = True
                if owner is not None:
                    _rows(conn, sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(user),
                                                                             sql.Identifier(owner)))
                _rows(conn, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(user)))
        _rows(admin, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))
        return True
    except (psycopg2.Error, RestoreError, OSError) as e:
        log.warning("could not drop the temporary restore role %s (the next restore drops it): %s", user,
                    one_line(str(e)))
        return False


def drop_stale_roles(admin: Connection, open_db: OpenDb) -> list[str]:
    """Drop the temporary roles of restores that died (their advisory lock is free); return them."""
    dropped = []
    for (user,) in _rows(admin, "SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
                         (TEMP_PREFIX.replace("_", "\\_") + "%",)):
        name = str(user)
        if not _rows(admin, "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, name))[0][0]:
            continue  # a restore that is running holds it
        try:
            if drop_role(admin, name, open_db):
                dropped.append(name)
        finally:
            _rows(admin, "SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_SPACE, name))
    if dropped:
        log.warning("dropped %d temporary role(s) left by an interrupted restore: %s", len(dropped),
                    ", ".join(dropped))
    return dropped


def drop_unused_owner_roles(admin: Connection) -> list[str]:
    """Drop the owner roles whose database is gone (dropped after a restore test, say) and that no
    running restore uses: they own nothing and would pile up."""
    dropped = []
    for (role,) in _rows(admin, """
            SELECT r.rolname FROM pg_roles r
            WHERE r.rolname LIKE %s
              AND NOT (r.rolsuper OR r.rolcanlogin OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication
                       OR r.rolbypassrls)  -- as this tool makes them; another is someone's: refused, kept
              AND NOT EXISTS (SELECT 1 FROM pg_database d WHERE d.datdba = r.oid)
              AND NOT EXISTS (SELECT 1 FROM pg_shdepend s WHERE s.refobjid = r.oid
                              AND s.refclassid = 'pg_authid'::regclass)
              AND NOT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
                              WHERE m.roleid = r.oid AND u.rolname LIKE %s)""",
                         (OWNER_PREFIX.replace("_", "\\_") + "%", TEMP_PREFIX.replace("_", "\\_") + "%")):
        try:
            _rows(admin, sql.SQL("DROP ROLE {}").format(sql.Identifier(str(role))))
            dropped.append(str(role))
        except psycopg2.Error as e:  # it came to own something meanwhile: keep it
            log.debug("kept owner role %s: %s", role, one_line(str(e)))
    return dropped
