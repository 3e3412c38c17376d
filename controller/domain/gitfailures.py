"""What kind of failure git reported, in words that are safe to give a caller.

git's stderr names URLs, resolved addresses, ports and server paths, and tells
"connection refused" from "timed out" from "not found" — enough to map an internal
network through the service. :func:`describe_git_failure` reduces it to one of four
fixed messages; nothing of git's text ever reaches the result.
"""

from __future__ import annotations

import re

COULD_NOT_CONNECT = "could not connect to the git server"
AUTHENTICATION_FAILED = "authentication failed"
NOT_FOUND = "repository or branch not found"

_OPERATION = re.compile(r"^[a-z][a-z-]{0,30}$")

# Quoted text, URLs and paths are dropped before matching, so a repository called
# ".../not found" or a host called "ssl.example" cannot pick the class.
_NOISE = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|\b[a-z][a-z0-9+.-]*://\S*|(?<![\w.])/\S*", re.I)

# Checked in this order: curl prefixes every HTTP failure with "unable to access" and may
# mention TLS or a proxy on the way, so the specific classes win over the connection class.
# Mid-transfer breaks ("the remote end hung up", "early EOF") are no class: a server that
# refuses a large push says the same.
_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        AUTHENTICATION_FAILED,
        re.compile(
            r"authentication failed|could not read (username|password)"
            r"|terminal prompts disabled|returned error: 40[13]\b|\bHTTP 40[13]\b"
            r"|permission denied \(|permission to \S* denied|access denied|invalid credentials",
            re.I,
        ),
    ),
    (
        NOT_FOUND,
        re.compile(
            r"returned error: 404\b|\bHTTP 404\b|\brepository\b[^\n]{0,20}\bnot found\b"
            r"|^remote: not found|could not be found|does not appear to be a git repo"
            r"|couldn't find remote ref|could not find remote branch|no such repository"
            r"|repository[^\n]{0,20}does not exist",
            re.I | re.M,
        ),
    ),
    (
        COULD_NOT_CONNECT,
        re.compile(
            r"could(n't| not) resolve|name or service not known|temporary failure in name"
            r"|failed to connect|couldn't connect|could not connect|connection refused"
            r"|connection timed out|timed out|timeout|connection reset|connection closed"
            r"|network is unreachable|no route to host|host is unreachable"
            r"|\bssl\b|\btls\b|gnutls|certificate|handshake|host key verification failed"
            r"|empty reply from server|proxy|kex_exchange_identification",
            re.I,
        ),
    ),
)


def git_failure_class(stderr: str) -> str | None:
    """One of the three class messages, or None when git's text fits none of them."""
    text = _NOISE.sub(" ", stderr)
    return next((message for message, pattern in _CLASSES if pattern.search(text)), None)


def describe_git_failure(operation: str, stderr: str) -> str:
    """``git <operation> failed: <class>``, or ``git <operation> failed``; never git's text.

    ``operation`` is the service's own word (``push``, ``fetch``, ``ls-remote``); anything
    else is shown as ``command``.
    """
    word = operation if _OPERATION.match(operation) else "command"
    found = git_failure_class(stderr)
    return f"git {word} failed: {found}" if found else f"git {word} failed"
