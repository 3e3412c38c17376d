"""A git server over HTTPS with basic auth, for tests of credential flows with the real `git`.

`GitHttpServer` serves bare repositories under ``<root>/repos`` with ``git http-backend``
run as a CGI program behind a stdlib ``ThreadingHTTPServer`` on 127.0.0.1. TLS uses a CA
and a server certificate (for 127.0.0.1 and localhost) made fresh at start: a client trusts
the server with ``GIT_SSL_CAINFO=<ca_file>`` and nothing else. A request without the right
``Authorization: Basic`` header gets ``401`` with ``WWW-Authenticate``, so a test can tell a
credential flow that works from one that would only work anonymously; ``requests`` logs
every request as ``(method, path, status)``.

Request bodies are streamed into http-backend: ``Content-Length`` bodies as they are,
``Transfer-Encoding: chunked`` ones (git's pushes above ``http.postBuffer``) de-chunked and
ended by EOF, which http-backend reads to the end when ``CONTENT_LENGTH`` is unset.
``Content-Encoding: gzip`` (git's larger fetch negotiations) goes through as
``HTTP_CONTENT_ENCODING``; http-backend inflates it itself.

The whole request body is fed before any response byte is written, so the TLS socket is
only ever used by one thread at a time; http-backend's stdout is drained by a helper thread
meanwhile, so neither side can block on a full pipe.

    with GitHttpServer(tmp_path, username="bot", password="s3cret") as server:
        url = server.create_bare("wine")          # https://127.0.0.1:<port>/wine.git
        env = {"GIT_SSL_CAINFO": str(server.ca_file), ...}
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import ipaddress
import os
import queue
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self, cast
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REALM = "mlexp test git"

_HOST = "127.0.0.1"
_BLOCK = 64 * 1024
_MAX_LINE = 64 * 1024
_DRAIN_LIMIT = 1 << 20  # a refused body up to this size is read and dropped, keeping the connection
_SOCKET_TIMEOUT = 60.0
_BACKEND_TIMEOUT = 120.0
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_NOT_FORWARDED = {"authorization", "content-type", "content-length", "transfer-encoding"}


def basic_auth_header(username: str, password: str) -> str:
    """The value of an ``Authorization`` header for HTTP basic auth."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def isolated_git_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A git client's environment: ``base`` less every ``GIT_*`` variable, and no user config.

    System and global config, credential helpers, askpass programs and terminal prompts are
    shut out, so a test sees what git does with exactly the settings it passes.
    """
    env = {key: value for key, value in (base or {}).items() if not key.startswith("GIT_")}
    env.pop("SSH_ASKPASS", None)
    env.update(
        PATH=(base or os.environ).get("PATH", os.defpath),
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="mlexp test",
        GIT_AUTHOR_EMAIL="mlexp-test@example.com",
        GIT_COMMITTER_NAME="mlexp test",
        GIT_COMMITTER_EMAIL="mlexp-test@example.com",
    )
    return env


# --- TLS material ------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and of a server certificate it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a new CA and a server certificate for 127.0.0.1 and localhost into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("mlexp test CA"))
        .issuer_name(_name("mlexp test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(_HOST)), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.touch(mode=0o600)
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


# --- CGI plumbing --------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...
    def readline(self, size: int = ..., /) -> bytes: ...


def _dechunk(stream: _Readable) -> Iterator[bytes]:
    """The payload of a ``Transfer-Encoding: chunked`` body, block by block."""
    while True:
        size = int(stream.readline(_MAX_LINE).split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        yield from _read_exactly(stream, size)
        if stream.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
            raise ValueError("malformed chunk")
    while stream.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
        pass  # trailers carry nothing http-backend needs


def _read_exactly(stream: _Readable, size: int) -> Iterator[bytes]:
    remaining = size
    while remaining > 0:
        block = stream.read(min(remaining, _BLOCK))
        if not block:
            raise ConnectionError("client closed the connection mid-body")
        remaining -= len(block)
        yield block


class _CgiOutput:
    """A CGI program's stdout, read on its own thread: the header block, then body blocks."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.status = int(HTTPStatus.BAD_GATEWAY)  # until the program says otherwise
        self.headers: list[tuple[str, str]] = []
        self._blocks: queue.Queue[bytes | None] = queue.Queue()
        self._headers_read = threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def wait_for_headers(self, timeout: float) -> None:
        if not self._headers_read.wait(timeout):
            raise TimeoutError("git http-backend sent no headers")

    def body(self) -> Iterator[bytes]:
        while (block := self._blocks.get(timeout=_BACKEND_TIMEOUT)) is not None:
            yield block

    def _pump(self, stream: IO[bytes]) -> None:
        # The pump owns the stream and closes it at EOF; if the program is killed, EOF
        # comes at once, so this thread never outlives the request by much.
        try:
            self._read_headers(stream)
            self._headers_read.set()
            while block := stream.read1(_BLOCK):  # type: ignore[attr-defined]
                self._blocks.put(block)
        except (OSError, ValueError):
            pass  # a program that died mid-output: the relay sees what came before
        finally:
            stream.close()
            self._headers_read.set()
            self._blocks.put(None)

    def _read_headers(self, stream: IO[bytes]) -> None:
        line = stream.readline(_MAX_LINE)
        if line:
            self.status = int(HTTPStatus.OK)
        while line not in (b"", b"\r\n", b"\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "status":
                self.status = int(value.split()[0])
            else:
                self.headers.append((name.strip(), value.strip()))
            line = stream.readline(_MAX_LINE)


@dataclass(frozen=True)
class _Backend:
    """What a request handler needs from its server: where the repos are, who may in, the log."""

    project_root: Path
    username: str
    authorization: str
    stderr_log: Path
    record: Callable[[str, str, int], None]

    def authorized(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(
            header.encode(), self.authorization.encode()
        )


class _GitCgiHandler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection: check basic auth, then hand each request to http-backend."""

    protocol_version = "HTTP/1.1"
    server_version = "mlexp-test-git/1"
    timeout = _SOCKET_TIMEOUT

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: ``GitHttpServer.requests`` is the log tests read."""

    @property
    def _backend(self) -> _Backend:
        return cast(_TlsHttpServer, self.server).backend

    def _serve(self) -> None:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._reply_plain(HTTPStatus.BAD_REQUEST, "bad Content-Length\n", close=True)
            return
        if not self._backend.authorized(self.headers.get("Authorization")):
            self._refuse(chunked=chunked, length=length)
            return
        self._run_backend(chunked=chunked, length=length)

    def _refuse(self, *, chunked: bool, length: int) -> None:
        close = chunked or length > _DRAIN_LIMIT
        if not close:
            for _ in _read_exactly(self.rfile, length):
                pass
        self._reply_plain(
            HTTPStatus.UNAUTHORIZED,
            "authentication required\n",
            close=close,
            extra=[("WWW-Authenticate", f'Basic realm="{REALM}"')],
        )

    def _reply_plain(
        self,
        status: HTTPStatus,
        text: str,
        *,
        close: bool,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        body = text.encode()
        self.send_response(status)
        for name, value in extra or []:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
        self._backend.record(self.command, self.path, int(status))

    def _cgi_env(self, *, chunked: bool, length: int) -> dict[str, str]:
        url = urlsplit(self.path)
        backend = self._backend
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(backend.project_root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_PROJECT_ROOT": str(backend.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": self.request_version,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(url.path),
            "QUERY_STRING": url.query,
            "REMOTE_USER": backend.username,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
        }
        if not chunked and "Content-Length" in self.headers:
            env["CONTENT_LENGTH"] = str(length)
        for name, value in self.headers.items():
            if name.lower() not in _NOT_FORWARDED:
                env["HTTP_" + name.upper().replace("-", "_")] = value
        return env

    def _run_backend(self, *, chunked: bool, length: int) -> None:
        backend = self._backend
        with backend.stderr_log.open("ab") as stderr:
            proc = subprocess.Popen(
                ["git", "http-backend"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=self._cgi_env(chunked=chunked, length=length),
            )
        try:
            output = _CgiOutput(cast(IO[bytes], proc.stdout))
            body = _dechunk(self.rfile) if chunked else _read_exactly(self.rfile, length)
            if not self._feed(body, cast(IO[bytes], proc.stdin)):
                self.close_connection = True  # the unread rest of the body is still on the wire
            output.wait_for_headers(_BACKEND_TIMEOUT)
            self._relay(output)
            proc.wait(timeout=_BACKEND_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    @staticmethod
    def _feed(body: Iterator[bytes], stdin: IO[bytes]) -> bool:
        """Stream ``body`` into http-backend; False if it stopped reading before the end."""
        try:
            for block in body:
                stdin.write(block)
            return True
        except BrokenPipeError:
            return False
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def _relay(self, output: _CgiOutput) -> None:
        self.send_response(output.status)
        lengths = [value for name, value in output.headers if name.lower() == "content-length"]
        for name, value in output.headers:
            self.send_header(name, value)
        if not lengths:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._backend.record(self.command, self.path, output.status)
        for block in output.body():
            self.wfile.write(block if lengths else b"%X\r\n%s\r\n" % (len(block), block))
        if not lengths:
            self.wfile.write(b"0\r\n\r\n")


class _TlsHttpServer(ThreadingHTTPServer):
    """A threading HTTP server that speaks TLS, handshaking on each connection's own thread."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext, backend: _Backend) -> None:
        super().__init__((_HOST, 0), _GitCgiHandler)
        self.context = context
        self.backend = backend

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Handshaking here rather than wrapping the listening socket keeps a client that
        # connects and stalls from holding up accept() for everybody else.
        request.settimeout(_SOCKET_TIMEOUT)
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-request are routine here (probes, failing tests, teardown).
        if isinstance(sys.exception(), ConnectionError | ssl.SSLError | TimeoutError):
            return
        super().handle_error(request, client_address)


# --- the server ----------------------------------------------------------------------------


class GitHttpServer:
    """Bare repositories over HTTPS with basic auth, served by ``git http-backend``."""

    def __init__(self, root: Path, *, username: str, password: str) -> None:
        self._root = Path(root)
        self._username = username
        self._authorization = basic_auth_header(username, password)
        self._lock = threading.Lock()
        self._httpd: _TlsHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._tls: TlsFiles | None = None
        self.requests: list[tuple[str, str, int]] = []

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:<port>``."""
        return f"https://{_HOST}:{self._running().server_address[1]}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that clients trust: ``GIT_SSL_CAINFO=<ca_file>``."""
        self._running()
        assert self._tls is not None
        return self._tls.ca_file

    @property
    def repos_dir(self) -> Path:
        """``GIT_PROJECT_ROOT``: where the bare repositories live."""
        return self._root / "repos"

    def repo_path(self, name: str) -> Path:
        """The bare repository served at ``<base_url>/<name>.git``."""
        if not _REPO_NAME.fullmatch(name) or name.endswith(".git"):
            raise ValueError(f"not a plain repository name: {name!r}")
        return self.repos_dir / f"{name}.git"

    def create_bare(self, name: str, *, initial_branch: str = "main") -> str:
        """Create an empty bare repo that accepts pushes; return its https URL."""
        path = self.repo_path(name)
        env = isolated_git_env(self._root)
        git = ["git", "-c", "init.templateDir="]
        subprocess.run(
            [*git, "init", "--quiet", "--bare", f"--initial-branch={initial_branch}", str(path)],
            check=True,
            env=env,
        )
        subprocess.run(
            [*git, "--git-dir", str(path), "config", "http.receivepack", "true"],
            check=True,
            env=env,
        )
        return f"{self.base_url}/{name}.git"

    def start(self) -> Self:
        if self._httpd is not None:
            raise RuntimeError("already started")
        self.repos_dir.mkdir(parents=True, exist_ok=True)
        self._tls = make_tls_files(self._root / "tls")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._tls.cert_file, self._tls.key_file)
        backend = _Backend(
            project_root=self.repos_dir,
            username=self._username,
            authorization=self._authorization,
            stderr_log=self._root / "http-backend.log",
            record=self._record,
        )
        self._httpd = _TlsHttpServer(context, backend)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="git-https", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=_SOCKET_TIMEOUT)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def _running(self) -> _TlsHttpServer:
        if self._httpd is None:
            raise RuntimeError("GitHttpServer is not running; use it as a context manager")
        return self._httpd
