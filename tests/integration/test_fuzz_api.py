"""Fuzzing the API from its own OpenAPI document with schemathesis (issue 8).

Every operation the service documents gets generated requests — valid and invalid
bodies, query strings and paths, including schemathesis' stateful phase that follows
the ids one answer gives to the next request — over real HTTP, with a bearer token.
The property: no 5xx, and every response conforms to the document (its schema and
content type). ``MLEXP_FUZZ_EXAMPLES`` sets the cases per operation (default 20 here);
``bench/fuzz.py`` runs the long version. The fuzzer is schemathesis' own CLI
(``st run``), the way a user would run it against a deployed service.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.settings import Settings
from tests.support.fuzz import fuzz
from tests.support.service import service_in_thread

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("MLEXP_FUZZ_EXAMPLES", "20"))


def test_no_server_errors_and_answers_match_the_document(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    settings = Settings(
        data_dir=(tmp_path / "data").resolve(),
        config_file=tmp_path / "none.yaml",
        k8s_config_file=tmp_path / "none-k8s.yaml",
        tokens_file=tokens,
        max_upload_bytes=256 * 1024,
        requests_per_second=0,
    )
    tokens.write_text(
        "tokens:\n  - {token: fuzz-admin-token-0123456789, name: fuzzer, admin: true}\n"
    )
    with service_in_thread(settings) as service:
        report = fuzz(
            service.url, "fuzz-admin-token-0123456789", examples=EXAMPLES, workdir=tmp_path
        )
    print(report.summary())
    assert report.operations >= 10, report.summary()
    assert report.cases > report.operations, report.summary()
    assert report.failures == [], report.summary()
