"""External dependencies: ``deps`` entries that are URLs, which DVC downloads itself.

DVC 3 accepts a URL where a dependency path goes and fetches it when the stage
runs (``dvc/dependency``, ``dvc/fs``). The service accepts the kinds the
workload image can fetch (``dvc-http`` and ``dvc-s3`` are installed):

* ``https://`` and ``http://`` -- the host must pass the egress policy, like
  ``git.url``; :attr:`ExternalDependency.host` is what the service checks.
* ``s3://bucket/key`` -- fetched from S3 with the run's storage credentials.
* ``remote://<name>/path`` -- a path in a DVC remote of the repository; the
  service configures exactly one, so ``<name>`` must be the bundle's
  ``dvc.remote`` (:attr:`ExternalDependency.remote`, checked by the service).

Other schemes (``gs``, ``azure``, ``ssh``, ``hdfs``...) are refused: the runner
could not fetch them. So are URLs that carry credentials (dvc.yaml is committed
to git), backslashes or control characters (parsers disagree on where the host
ends), and ``..`` in a remote path (it would climb out of the remote).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from controller.domain.egress import BadHost, http_url_host

__all__ = [
    "SCHEMES",
    "ExternalDependency",
    "UnsupportedUrl",
    "external_dependency",
    "redacted",
]

SCHEMES = ("https", "http", "s3", "remote")
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


class UnsupportedUrl(ValueError):
    """A URL dependency the service will not accept; the message says why."""


@dataclass(frozen=True)
class ExternalDependency:
    """A URL a stage depends on, as written in dvc.yaml."""

    stage: str
    url: str
    scheme: str
    # What the service must check: the host to resolve (http/https) or the
    # DVC remote named (remote://).
    host: str | None = None
    remote: str | None = None


def redacted(url: str) -> str:
    """``url`` fit for an error message: whatever precedes an ``@`` in it is hidden."""
    return _USERINFO.sub(r"\1***@", url)


def external_dependency(stage: str, url: str) -> ExternalDependency:
    """Classify ``url`` (one :func:`~.locations.is_url` accepts); raises :class:`UnsupportedUrl`."""
    if _UNSAFE.search(url):
        raise UnsupportedUrl("a URL must not contain spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UnsupportedUrl("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UnsupportedUrl(
            f"'{scheme}://' dependencies are not supported here (use {', '.join(SCHEMES)})"
        )
    if "@" in parts.netloc:
        raise UnsupportedUrl("credentials in a URL are not accepted (dvc.yaml is committed to git)")
    if not parts.netloc:
        raise UnsupportedUrl("the URL names no host, bucket or remote")
    if scheme in ("https", "http"):
        try:
            host = http_url_host(url)
        except BadHost:
            raise UnsupportedUrl("the URL has no valid host") from None
        return ExternalDependency(stage, url, scheme, host=host)
    if scheme == "remote":
        if any(part in (".", "..") for part in parts.path.split("/")):
            raise UnsupportedUrl("'.' and '..' are not allowed in a remote:// path")
        return ExternalDependency(stage, url, scheme, remote=parts.netloc)
    return ExternalDependency(stage, url, scheme)
