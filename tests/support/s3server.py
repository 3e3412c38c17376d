"""S3 over HTTP (or HTTPS) on 127.0.0.1, served by moto in a thread, for real DVC and boto3
clients.

`S3Server` starts ``moto.server.ThreadedMotoServer`` on a port the OS picks (port 0, read
back after binding, so two test processes never race for one), and offers the few bucket
operations tests need to set up and inspect state.

``S3Server(https=True)`` serves the same app over TLS instead (moto's threaded server has
no TLS option, so werkzeug's server is started here the way moto starts it), with a server
certificate for 127.0.0.1 issued by a throwaway CA made at start
(:func:`tests.support.gitserver.make_tls_files`). A client trusts it through ``ca_file``
and nothing else: ``subprocess_env()`` sets ``AWS_CA_BUNDLE`` to it and the boto3 client
made here verifies against it, so a client without it fails certificate verification.

Credentials are fixed test values and are never put into ``os.environ``. The boto3 client
made here gets them explicitly, with the developer's AWS profile and ``~/.aws`` files shut
out; ``subprocess_env()`` builds the environment of a client subprocess (``dvc push``) from
a base mapping with every ``AWS_*`` variable replaced, pointing ``AWS_CONFIG_FILE`` and
``AWS_SHARED_CREDENTIALS_FILE`` at empty files the server owns.

Moto keeps its backends per process, not per server: two ``S3Server`` instances in one
process see the same buckets, so tests use bucket names of their own. The server runs in
the test process, so a broken ``AWS_PROFILE`` in the developer's environment can still
upset moto itself (it builds botocore sessions from ``os.environ``).

    with S3Server() as s3:
        s3.create_bucket("artifacts")
        subprocess.run(["dvc", "push"], env=s3.subprocess_env(os.environ), check=True)
        assert s3.list_keys("artifacts", "wine/")

    with S3Server(https=True) as s3:              # https://127.0.0.1:<port>
        settings = settings.model_copy(update={"storage": StorageSettings(ca_bundle=s3.ca_file)})
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import boto3
import botocore.session
from botocore.config import Config
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import BaseWSGIServer, make_server

from tests.support.gitserver import make_tls_files

ACCESS_KEY_ID = "mlexp-test-access-key"
SECRET_ACCESS_KEY = "mlexp-test-secret-key"  # a fixed credential for a fake server
REGION = "us-east-1"
_HOST = "127.0.0.1"


class _TlsMotoServer:
    """What ``ThreadedMotoServer`` runs (moto's app on werkzeug's threaded server), over TLS."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._server: BaseWSGIServer = make_server(
            _HOST,
            0,
            DomainDispatcherApplication(create_backend_app),
            threaded=True,
            request_handler=MotoRequestHandler,
            ssl_context=context,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="moto-s3-https", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def get_host_and_port(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


class S3Server:
    """Moto's S3 on 127.0.0.1 with fixed credentials, as a context manager; over TLS with a
    private CA's certificate when ``https`` is set."""

    access_key_id = ACCESS_KEY_ID
    secret_access_key = SECRET_ACCESS_KEY
    region = REGION

    def __init__(self, *, https: bool = False) -> None:
        self.https = https
        self._server: ThreadedMotoServer | _TlsMotoServer | None = None
        self._endpoint_url: str | None = None
        self._aws_dir: Path | None = None
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https://`` in HTTPS mode)."""
        self._running()
        assert self._endpoint_url is not None
        return self._endpoint_url

    @property
    def ca_file(self) -> Path:
        """The PEM file of the CA that issued the server's certificate (HTTPS mode only)."""
        if not self.https:
            raise RuntimeError("an S3Server over plain HTTP has no CA; use S3Server(https=True)")
        return self._tls_dir() / "ca.pem"

    @property
    def client(self) -> Any:
        """A boto3 S3 client for this server; nothing of it comes from the environment."""
        if self._client is None:
            session = botocore.session.Session()
            store = session.get_component("config_store")
            config_file, credentials_file = self._aws_files()
            store.set_config_variable("config_file", str(config_file))
            store.set_config_variable("credentials_file", str(credentials_file))
            # None, not "default": an explicitly named profile would then have to exist.
            store.set_config_variable("profile", None)
            self._client = boto3.session.Session(botocore_session=session).client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.access_key_id,
                aws_secret_access_key=self.secret_access_key,
                aws_session_token=None,
                region_name=self.region,
                verify=str(self.ca_file) if self.https else None,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
            )
        return self._client

    def subprocess_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: empty) with every ``AWS_*`` variable replaced by this server's
        (in HTTPS mode ``AWS_CA_BUNDLE`` too: the CA file, so clients trust the server)."""
        config_file, credentials_file = self._aws_files()
        env = {key: value for key, value in (base or {}).items() if not key.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key_id,
            AWS_SECRET_ACCESS_KEY=self.secret_access_key,
            AWS_DEFAULT_REGION=self.region,
            AWS_REGION=self.region,
            AWS_CONFIG_FILE=str(config_file),
            AWS_SHARED_CREDENTIALS_FILE=str(credentials_file),
            AWS_EC2_METADATA_DISABLED="true",
        )
        if self.https:
            env["AWS_CA_BUNDLE"] = str(self.ca_file)
        return env

    def create_bucket(self, name: str) -> None:
        self.client.create_bucket(Bucket=name)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` under ``prefix``, sorted."""
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def get(self, bucket: str, key: str) -> bytes:
        body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("already started")
        self._aws_dir = Path(tempfile.mkdtemp(prefix="mlexp-s3-"))
        for path in self._aws_files():
            path.touch()
        server: ThreadedMotoServer | _TlsMotoServer
        if self.https:
            tls = make_tls_files(self._tls_dir())
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert_file, tls.key_file)
            server = _TlsMotoServer(context)
        else:
            server = ThreadedMotoServer(ip_address=_HOST, port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self._endpoint_url = f"{'https' if self.https else 'http'}://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._aws_dir is not None:
            shutil.rmtree(self._aws_dir, ignore_errors=True)
            self._aws_dir = None
        self._endpoint_url = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _aws_files(self) -> tuple[Path, Path]:
        """Empty AWS config and credentials files that stand in for the developer's ~/.aws.

        Empty files rather than /dev/null: dvc-s3 opens ``AWS_CONFIG_FILE`` itself and
        fails on anything that is not a regular file.
        """
        self._running()
        assert self._aws_dir is not None
        return self._aws_dir / "config", self._aws_dir / "credentials"

    def _tls_dir(self) -> Path:
        """Where the CA and the server's certificate and key live while the server runs."""
        self._running()
        assert self._aws_dir is not None
        return self._aws_dir / "tls"

    def _running(self) -> None:
        if self._aws_dir is None:
            raise RuntimeError("S3Server is not running; use it as a context manager")
