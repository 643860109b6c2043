"""Storage URLs fit to print: the password and secret query values hidden, in a URL and in any error text.

SQLAlchemy's own parser reads a database URL (``make_url``: what ``RDBStorage`` connects with), so a
password with ``/`` or ``?`` in it is hidden whole. Query values whose key names a secret (``password``,
``sslpassword``, ``token``, ``api_key``, ...) are hidden too. A URL SQLAlchemy cannot read, or reads
ambiguously (a raw ``@`` in the password), shows only its scheme.
"""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from ensemble.errors import one_line

MASK = "***"
#: A query key holding any of these words (case-insensitive) holds a secret.
SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "credential", "signature")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_secret_key(key: str) -> bool:
    """A query-string key whose value is a secret (``password``, ``sslpassword``, ``access_token``, ...)."""
    return any(word in key.lower() for word in SECRET_WORDS)


def redact(url: str) -> str:
    """``url`` with its password and secret query values shown as ``***`` (for output, logs and errors).

    A text without ``scheme://`` (a journal file's path) is returned as it is.
    """
    from sqlalchemy.engine import make_url

    match = _SCHEME.match(url)
    if match is None:
        return url
    try:
        parsed = make_url(url)
        shown = parsed.render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: show nothing of it but the scheme
        return match.group(1) + MASK
    if url.count("@") > 1 or "@" in (parsed.host or ""):  # a raw "@" in a secret: where it ends is a guess
        return match.group(1) + MASK
    head, sep, query = shown.partition("?")
    return head + sep + _mask_query(query) if sep else head


def _mask_query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        key, eq, _value = pair.partition("=")
        pairs.append(f"{key}={MASK}" if eq and is_secret_key(unquote_plus(key)) else pair)
    return "&".join(pairs)


def secrets_of(url: str | None) -> set[str]:
    """Every spelling of the secrets in ``url`` (the password, secret query values; raw, decoded, encoded)."""
    from sqlalchemy.engine import make_url

    match = _SCHEME.match(url or "")
    if match is None:
        return set()
    rest = match.group(2)
    found: set[str] = set()
    try:
        parsed = make_url(url or "")
        found.add(parsed.password or "")
        for key, value in parsed.query.items():
            if is_secret_key(key):
                found.update([value] if isinstance(value, str) else value)
        exact = rest.count("@") <= 1
    except Exception:
        exact = False
    if not exact:  # where the secrets end is a guess: take the widest reading, not SQLAlchemy's
        found = set()
        if "@" in rest:  # after the first ":" of the user part, up to the last "@"
            found.add(rest.rsplit("@", 1)[0].partition(":")[2])
        for pair in re.split(r"[?&;]", rest):
            key, eq, value = pair.partition("=")
            if eq and is_secret_key(unquote_plus(key)):
                found.add(value)
    spelled = {form for s in found for form in (s, unquote(s), unquote_plus(s), quote(s, safe=""), quote_plus(s))}
    return {s for s in spelled if s}


def hide_secrets(text: str, url: str | None = None) -> str:
    """``text`` (an error message, a log line) with ``url``'s secrets and any URL's password shown as ``***``.

    A driver's error can quote the password it was given, outside of any URL: it is masked wherever it occurs.
    """
    for secret in sorted(secrets_of(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


def driver_error(exc: BaseException, url: str | None = None) -> str:
    """A database driver's error as one line, secrets hidden (SQLAlchemy appends a "Background on this error" line)."""
    return one_line(hide_secrets(str(exc).split("\n(Background on this error")[0], url), limit=None)
