"""A database URL's password never shows: not in an error (nor its hint, nor a chained exception of
urllib), not in ``repr``/``str``/``redacted()``, however malformed the URL; and the stderr tail of
a client is scrubbed of it even where the tail cuts it in two."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from erp_backup.adapters import proc
from erp_backup.core.dburl import DatabaseUrl, parse_database_url
from erp_backup.core.errors import ConfigError

HEAD, TAIL = "Zq7", "Kx9"  # a generated password starts and ends with these: any piece of it shows

# URL shapes an operator could write, the password put in as typed (p) or percent-encoded (e)
SHAPES: dict[str, Callable[[str, str], str]] = {
    "valid": lambda p, e: f"postgresql://erp:{e}@db.example:5432/erp",
    "valid, raw": lambda p, e: f"postgres://erp:{p}@db.example/erp",
    "one slash": lambda p, e: f"postgresql:/user:{p}@host/db",
    "no scheme": lambda p, e: f"user:{p}@host/db",
    "no colon": lambda p, e: f"mysql//u:{p}@h/d",
    "bad port": lambda p, e: f"postgresql://u:{p}@h:notaport/db",
    "port out of range": lambda p, e: f"mysql://u:{e}@h:99999/db",
    "brackets": lambda p, e: f"postgresql://u:{p}@[::1/db",
    "no host": lambda p, e: f"postgresql://u:{p}",
    "no database": lambda p, e: f"mysql://u:{e}@h:3306/",
    "query": lambda p, e: f"postgresql://u:{e}@h/db?sslmode=require&password={e}",
    "query only": lambda p, e: f"postgresql://u@h/db?password={e}",
    "sqlite": lambda p, e: f"sqlite://u:{p}@x",
    "sqlite encoded": lambda p, e: f"sqlite://u:{e}@x/db.sqlite3",
    "unknown scheme": lambda p, e: f"oracle://u:{p}@h/db",
    "bare password": lambda p, e: p,
}

passwords = st.builds(
    lambda mid: HEAD + mid + TAIL,
    st.text(alphabet=st.sampled_from(list("abcXYZ019@:/?#%[]&=+ .,;'\"\\-_~ßé€中😀＠／")), min_size=0, max_size=16))


def leaks(text: str, pw: str) -> list[str]:
    pieces = {HEAD, TAIL, pw, quote(pw, safe=""), quote(pw)}
    pieces |= {pw[i:i + 8] for i in range(len(pw) - 7)}
    return [p for p in pieces if p and p in text]


def everything_about(e: BaseException) -> str:
    """The error as every consumer may print it: message, hint, traceback with chained exceptions."""
    return "\n".join([str(e), str(getattr(e, "hint", "")), *traceback.format_exception(e)])


@settings(max_examples=80, deadline=None)
@given(pw=passwords, shape=st.sampled_from(sorted(SHAPES)))
@example(pw=HEAD + "p@ss/w:rd" + TAIL, shape="one slash")
@example(pw=HEAD + "12/ab" + TAIL, shape="valid, raw")
@example(pw=HEAD + "＠／" + TAIL, shape="valid, raw")
@example(pw=HEAD + "#x?y" + TAIL, shape="no scheme")
@example(pw=HEAD + ":" + TAIL, shape="bare password")  # once echoed as a "scheme"
def test_a_password_never_shows_however_malformed_the_url(pw: str, shape: str) -> None:
    text = SHAPES[shape](pw, quote(pw, safe=""))
    try:
        url = parse_database_url(text, key="database.url")
    except ConfigError as e:
        out = everything_about(e)
        assert "\n" not in str(e) and "database.url" in str(e)
    except Exception as e:  # any other exception is a bug, and must not leak either
        pytest.fail(f"{type(e).__name__} escaped: {leaks(everything_about(e), pw)}")
    else:
        out = "\n".join([url.redacted(), str(url), repr(url), str(url.options != ())])
        if url.password or shape.startswith("query"):
            assert pw in url.secrets(), "client output could not be scrubbed of it"
    assert leaks(out, pw) == [], out


def test_repr_of_a_hand_made_url_hides_password_and_options() -> None:
    u = DatabaseUrl("postgresql", "erp", "h", 5432, "erp", "Sup3r-Secret", (("password", "Opt-Secret"),))
    for text in (repr(u), str(u), u.redacted(), repr([u]), f"{u}"):
        assert "Sup3r-Secret" not in text and "Opt-Secret" not in text, text
    assert u.secrets() == ("Sup3r-Secret", "Opt-Secret")
    assert "Sup3r-Secret" in u.with_name("other").secrets()


SECRET = "Q1w2E3r4T5y6U7i8O9p0Zz!!"


@pytest.mark.parametrize("after", [0, 5, 4096 - 20, 4096 - 12, 4096 - 4, 4096, 4100, 9000])
@pytest.mark.parametrize("newlines", [False, True])
def test_the_stderr_tail_never_holds_a_piece_of_a_secret(after: int, newlines: bool) -> None:
    """The tail is the last 4 KiB of stderr: where that cut falls inside the secret, no piece of it
    may remain (the old tail was cut first and scrubbed after)."""
    filler = "line of output\n" if newlines else "x"
    program = (f"import sys; sys.stderr.write({filler!r} * 3000 + {SECRET!r} + {filler[:1]!r} * {after}); "
               "sys.exit(3)")
    with pytest.raises(proc.ProcError) as e:
        proc.run([sys.executable, "-c", program], secrets=(SECRET,), what="client")
    for text in (str(e.value), e.value.stderr_tail):
        pieces = [SECRET[i:i + 4] for i in range(len(SECRET) - 3)]
        assert [p for p in pieces if p in text] == [], text[:80]
    assert e.value.returncode == 3
