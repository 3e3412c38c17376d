"""Where the URLs and paths in a caller's ``repo_json`` really lead, checked before use.

The I/O half of the egress rules (the pure half is :mod:`controller.domain.egress`):
host names are resolved with ``getaddrinfo`` and every address must pass the
policy; local paths (local profile only) are resolved with ``realpath`` and must
lie under a configured ``local_roots`` entry and never in or around the service's
data dir, which holds every experiment's repos, remotes and secrets.

DNS rebinding: a name is resolved here and again, later, by git, curl or DVC when
they connect (and for a run by the runner, possibly on another machine). A name
whose answer changes in between gets past this check; the window is the time
from this check to the connection (runs are re-checked when submitted, see
:meth:`LocationGuard.check`). Closing it needs the connection pinned to the
address checked here (curl's ``--resolve``, git's ``http.curloptResolve``).

Every refusal is an :class:`InvalidBundle` naming the field and the kind of
problem, never the address, the resolved name or a server path.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from controller.domain.bundle import Profile, RepoSpec, is_local_url
from controller.domain.egress import (
    BadHost,
    EgressPolicy,
    IPAddress,
    git_url_host,
    http_url_host,
    literal_address,
    parse_address,
    refusal_message,
)
from controller.domain.errors import InvalidBundle
from controller.settings import Settings

Resolver = Callable[[str], Sequence[IPAddress]]
"""host name -> every address it resolves to; raises :class:`Unresolvable`."""

# What git also opens for a local repository path "x" (setup.c, enter_repo).
_GIT_SUFFIXES = ("/.git", ".git/.git", ".git")


class Unresolvable(Exception):
    """The host name does not resolve."""


def system_resolver(host: str) -> list[IPAddress]:
    """Every address ``getaddrinfo`` gives for ``host`` (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:  # gaierror is an OSError; idna may refuse a label
        raise Unresolvable(host) from exc
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            addresses.append(parse_address(str(sockaddr[0])))
    return addresses


class LocationGuard:
    """Checks every URL and path of a ``repo_json`` against the egress and local-path rules."""

    def __init__(
        self,
        *,
        profile: Profile,
        policy: EgressPolicy,
        local_roots: Sequence[Path] = (),
        data_dir: Path,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.profile = profile
        self.policy = policy
        self.local_roots = tuple(Path(os.path.realpath(root)) for root in local_roots)
        self.data_dir = Path(os.path.realpath(data_dir))
        self.resolver = resolver

    @classmethod
    def from_settings(
        cls, settings: Settings, profile: Profile, resolver: Resolver | None = None
    ) -> LocationGuard:
        """A bad ``egress.allowed_networks`` entry is a ValueError (start-up fails)."""
        return cls(
            profile=profile,
            policy=EgressPolicy.for_profile(profile, settings.egress.allowed_networks),
            local_roots=settings.local_roots,
            data_dir=settings.data_dir,
            resolver=resolver or system_resolver,
        )

    def check(self, spec: RepoSpec) -> None:
        """All of ``spec``'s locations; left-out ones (the service's own repo) need nothing.

        Called when a bundle is validated and again when a run is submitted, so a name
        that changed its answer since the experiment was created is caught then.
        """
        if spec.git.url is not None:
            if is_local_url(spec.git.url):
                self.check_local_path(spec.git.url, "git.url", git_repository=True)
            else:
                self.check_host(_host(git_url_host, spec.git.url, "git.url"), "git.url")
        if spec.dvc.url is not None and is_local_url(spec.dvc.url):
            self.check_local_path(spec.dvc.url, "dvc.url", git_repository=False)
        if spec.storage is not None and spec.storage.endpoint_url is not None:
            field = "storage.endpoint_url"
            self.check_host(_host(http_url_host, spec.storage.endpoint_url, field), field)

    def check_host(self, host: str | None, field: str) -> None:
        if host is None:
            return
        literal = literal_address(host)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            try:
                addresses = self.resolver(host)
            except Unresolvable:
                addresses = []
            if not addresses:
                raise InvalidBundle(
                    f"{field}: its host name does not resolve from this service; check the "
                    "spelling, and that the name is known to the service's DNS"
                )
        refused = self.policy.refusal(addresses)
        if refused is not None:
            raise InvalidBundle(refusal_message(field, refused))

    def check_local_path(self, url: str, field: str, *, git_repository: bool) -> None:
        """A local path must lie under a ``local_roots`` entry and clear of the data dir.

        Decided on real paths (symlinks followed). For a repository, every variant git
        itself would open (``x/.git``, ``x.git``, ...) is checked too, so a symlink or a
        gitfile next to an allowed path cannot lead git elsewhere.
        """
        if self.profile != "local":  # bundle parsing refuses these first; never rely on it
            raise InvalidBundle(f"{field}: local paths are accepted only in the local profile")
        path = url.removeprefix("file://")
        if "%" in path:  # git and DVC may percent-decode what realpath would take literally
            raise InvalidBundle(f"{field}: a local path must not contain '%'")
        if not self.local_roots:
            raise InvalidBundle(
                f"{field}: local paths are refused unless they are under a directory listed "
                "in the server setting local_roots (MLEXP_LOCAL_ROOTS, a JSON list); leave "
                f"{field} out to use the service's own"
            )
        candidates = [path]
        if git_repository:
            candidates += [path + s for s in _GIT_SUFFIXES if os.path.lexists(path + s)]
        for candidate in candidates:
            if git_repository and os.path.isfile(candidate):
                # git reads a file there as "gitdir: <anywhere>"
                raise InvalidBundle(f"{field}: a local repository must be a directory")
            self._check_real_path(Path(os.path.realpath(candidate)), field)

    def _check_real_path(self, real: Path, field: str) -> None:
        around_data = real.is_relative_to(self.data_dir) or self.data_dir.is_relative_to(real)
        if around_data or not any(real.is_relative_to(root) for root in self.local_roots):
            # One message for both, so probing paths does not tell where the data dir is.
            raise InvalidBundle(
                f"{field}: this local path is not under a directory listed in the server "
                "setting local_roots, or it leads into the service's data dir, which callers "
                "never use (leave it out to use the experiment's own)"
            )


def _host(parse: Callable[[str], str | None], url: str, field: str) -> str | None:
    try:
        return parse(url)
    except BadHost:
        raise InvalidBundle(f"{field} has no valid host") from None
