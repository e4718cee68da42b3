"""A MariaDB restore runs with the rights of the target database only.

The configured user (often root) only prepares: it creates a *temporary account*
``erpb_restore_<time>_<random>`` with a random password and no privilege of its own, and grants it
the *owner role* of the target database, ``erpb_owner_<sha256(name)[:12]>``, which holds ALL
PRIVILEGES on that one database (``_`` and ``%`` escaped: no wildcard grant) and nothing else —
no FILE, SUPER, SET USER, CREATE USER, no other database. The dump's statements run through a
connection of the temporary account, whatever they say (``INSERT INTO other_db.t``, ``SELECT …
INTO OUTFILE``, ``SET GLOBAL``…): the server refuses what reaches past the target database.

Stored objects run with their definer's rights later, whoever fires them: every ``DEFINER=``
clause is rewritten to ``DEFINER=CURRENT_ROLE`` (``mysql_script.confine_definers``), so triggers,
views, routines and events run as the owner role — confined too. A clause the rewrite missed names
another account, which the temporary account may not set: the server refuses the statement.

The temporary account is dropped after the restore. A restore killed (SIGKILL) before that leaves it
behind: every restore first drops the ``erpb_restore_*`` accounts whose named lock (``GET_LOCK``,
held by the creating connection for as long as it lives, released by the server when the process
dies) is free. The owner role stays: the restored objects need their definer.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pymysql
import pymysql.err

from erp_backup.adapters.databases.common import log, one_line
from erp_backup.core.dburl import DatabaseUrl
from erp_backup.core.errors import RestoreError

TEMP_PREFIX = "erpb_restore_"
OWNER_PREFIX = "erpb_owner_"
LOCK_PREFIX = "erp-backup:"
SETUP_LOCK = "erp-backup:owner-roles"


def owner_role(database: str) -> str:
    return OWNER_PREFIX + hashlib.sha256(database.encode("utf-8")).hexdigest()[:12]


def grant_target(database: str) -> str:
    """``db``.* for GRANT: ``_`` and ``%`` are wildcards there; escaped, it names this database only."""
    return "`" + _grant_db(database).replace("`", "``") + "`.*"


def native_password_hash(password: str) -> str:
    """``*<SHA1(SHA1(password))>``: the server never sees the password in a statement (or its log)."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode("utf-8")).digest()).hexdigest().upper()


def _exec(conn: pymysql.connections.Connection, query: str, args: tuple[object, ...] | None = None
          ) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, args)
        return list(cur.fetchall())


@dataclass(frozen=True)
class Login:
    url: DatabaseUrl  # whom the dump's statements run as
    definer: bytes  # what every DEFINER clause becomes (mysql_script.confine_definers)
    confined: bool  # False: the configured user's own rights (it could not make a temporary account)


# the configured user may not create accounts or roles, or grant: it restores with its own rights
_NOT_ALLOWED = (1044, 1045, 1142, 1227, 1410)


@contextmanager
def confined_login(admin: pymysql.connections.Connection, target: DatabaseUrl) -> Iterator[Login]:
    """Yield the login of a temporary account confined to the target database (``admin`` must stay
    open meanwhile: it holds the account's lock) and drop the account after; or, where that cannot
    be (a MySQL server, a user without CREATE USER), the configured user's own, with a warning."""
    version = str(_exec(admin, "SELECT VERSION()")[0][0])
    if "mariadb" not in version.lower():
        yield _unconfined(target, f"MySQL {version} has no role that can be a definer")
        return
    drop_stale_accounts(admin)
    host = str(_exec(admin, "SELECT SUBSTRING_INDEX(USER(), '@', -1)")[0][0])
    user = f"{TEMP_PREFIX}{int(time.time()):08x}_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    account = f"{admin.escape(user)}@{admin.escape(host)}"
    role = owner_role(target.name)
    _exec(admin, "SELECT GET_LOCK(%s, 0)", (LOCK_PREFIX + user,))
    refused = ""
    created = False
    try:
        try:
            # one restore at a time sets up or collects owner roles: a role is never seen without its member
            _exec(admin, "SELECT GET_LOCK(%s, 30)", (SETUP_LOCK,))
            try:
                drop_unused_owner_roles(admin)
                _exec(admin, f"CREATE ROLE IF NOT EXISTS {role}")
                _exec(admin, f"GRANT ALL PRIVILEGES ON {grant_target(target.name)} TO {role}")
                _exec(admin, f"CREATE USER {account} IDENTIFIED BY PASSWORD %s", (native_password_hash(password),))
                created = True
                _exec(admin, f"GRANT {role} TO {account}")
                _exec(admin, f"SET DEFAULT ROLE {role} FOR {account}")
            finally:
                _exec(admin, "SELECT RELEASE_LOCK(%s)", (SETUP_LOCK,))
        except pymysql.err.MySQLError as e:
            cause = one_line(str(e.args[1]) if len(e.args) > 1 else str(e), target.secrets())
            if not (e.args and e.args[0] in _NOT_ALLOWED):
                raise RestoreError(f"cannot create the temporary account that restores database '{target.name}' "
                                   f"with the rights of that database only: {cause}",
                                   hint="look at the MySQL server log, then restore again") from None
            refused = f"user '{target.user or 'the restore user'}' cannot create one ({cause})"
        if refused:
            if created:
                _drop_account(admin, account)
                created = False
            yield _unconfined(target, refused)
        else:
            yield Login(replace(target, user=user, password=password, password_as_written=""), b"CURRENT_ROLE",
                        True)
    finally:
        if created:
            _drop_account(admin, account)
        try:
            _exec(admin, "SELECT RELEASE_LOCK(%s)", (LOCK_PREFIX + user,))
        except pymysql.err.MySQLError:
            pass  # closing the connection releases it


def _unconfined(target: DatabaseUrl, why: str) -> Login:
    log.warning("restoring database '%s' with the rights of the configured user, not of that database only: "
                "a temporary account confined to it cannot be made (%s). A crafted dump can do whatever that "
                "user may; restore as a MariaDB user with CREATE USER and GRANT OPTION (e.g. root) to confine "
                "it", target.name, why)
    return Login(target, b"CURRENT_USER", False)


def _drop_account(admin: pymysql.connections.Connection, account: str) -> None:
    try:
        _exec(admin, f"DROP USER IF EXISTS {account}")
    except pymysql.err.MySQLError as e:
        log.warning("could not drop the temporary restore account %s (the next restore drops it): %s",
                    account, one_line(str(e)))


def drop_stale_accounts(admin: pymysql.connections.Connection) -> list[str]:
    """Drop the temporary accounts of restores that died (their lock is free); return them."""
    try:
        rows = _exec(admin, "SELECT User, Host FROM mysql.user WHERE User LIKE %s",
                     (TEMP_PREFIX.replace("_", "\\_") + "%",))
    except pymysql.err.MySQLError as e:
        log.debug("cannot look for temporary accounts of interrupted restores: %s", one_line(str(e)))
        return []
    dropped = []
    for user, host in rows:
        lock = LOCK_PREFIX + str(user)
        if _exec(admin, "SELECT GET_LOCK(%s, 0)", (lock,))[0][0] != 1:
            continue  # a restore that is running holds it
        try:
            account = f"{admin.escape(str(user))}@{admin.escape(str(host))}"
            _drop_account(admin, account)
            dropped.append(f"{user}@{host}")
        finally:
            _exec(admin, "SELECT RELEASE_LOCK(%s)", (lock,))
    if dropped:
        log.warning("dropped %d temporary account(s) left by an interrupted restore: %s", len(dropped),
                    ", ".join(dropped))
    return dropped


def _grant_db(database: str) -> str:
    """``database`` as mysql.db stores a grant on it (``grant_target`` without the quotes)."""
    return database.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")


def drop_unused_owner_roles(admin: pymysql.connections.Connection) -> list[str]:
    """Drop the owner roles whose database is gone (dropped after a restore test, say) and that no
    running restore holds: they would pile up. Call it holding SETUP_LOCK."""
    owners = OWNER_PREFIX.replace("_", "\\_") + "%"
    try:
        roles = [str(r[0]) for r in _exec(admin, "SELECT User FROM mysql.user WHERE is_role = 'Y' AND User LIKE %s",
                                          (owners,))]
        held = {str(r[0]) for r in _exec(admin, "SELECT Role FROM mysql.roles_mapping WHERE User LIKE %s",
                                         (TEMP_PREFIX.replace("_", "\\_") + "%",))}
        schemas = {_grant_db(str(r[0])) for r in _exec(admin, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")}
        live = {str(u) for u, db in _exec(admin, "SELECT User, Db FROM mysql.db WHERE User LIKE %s", (owners,))
                if str(db) in schemas}
    except pymysql.err.MySQLError as e:
        log.debug("cannot look for unused owner roles: %s", one_line(str(e)))
        return []
    dropped = []
    for role in roles:
        if role in held or role in live:
            continue
        try:
            _exec(admin, f"DROP ROLE {admin.escape(role)}")
            dropped.append(role)
        except pymysql.err.MySQLError as e:
            log.debug("kept owner role %s: %s", role, one_line(str(e)))
    return dropped
