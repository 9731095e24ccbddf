"""Passwords out of anything the pipeline logs, prints or writes: URLs with `***` in their place."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

HIDDEN = "***"
# `scheme://user:password@` anywhere in a text, such as an error message that quotes a URL.
USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)[^\s/@]*@")


def has_password(text: str) -> bool:
    """Whether a string is a URL that carries a password (`scheme://user:password@host`)."""
    try:
        return "://" in text and urllib.parse.urlsplit(text).password is not None
    except ValueError:  # not a URL at all, e.g. an unbalanced "["
        return False


def redact(text: str) -> str:
    """A URL with its password replaced by `***`; any other string as it is."""
    if not has_password(text):
        return text
    parts = urllib.parse.urlsplit(text)
    user, _, _ = parts.netloc.rpartition("@")[0].partition(":")
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{HIDDEN}@{host}"))


def redact_text(text: str) -> str:
    """A text with the password of every URL in it replaced by `***`."""
    return USERINFO.sub(rf"\g<1>{HIDDEN}@", text)


def without_credentials(url: str) -> str:
    """A URL with no user or password at all, e.g. to probe a server."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping with every string value redacted."""
    return {key: redact(value) if isinstance(value, str) else value for key, value in values.items()}
