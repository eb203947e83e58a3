"""scripts/audit_dependencies.py, the `make audit` step: pip-audit over the installed environment.

The public vulnerability services are not reachable from every machine, so pip-audit runs against
a local OSV stand-in (the OSV v1 query API over real HTTP, pip-audit's --osv-url), which answers
from a table of advisories the test sets: a found vulnerability fails the step, a clean audit
passes, a dead or ignorant service gives the loud warning (and fails when the audit is required).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

SCRIPT = ROOT / "scripts" / "audit_dependencies.py"
Advisories = dict[tuple[str, str], list[dict[str, object]]]


def advisory(id: str, name: str, fixed: str) -> dict[str, object]:
    """An OSV record (https://ossf.github.io/osv-schema/) affecting ``name`` before ``fixed``."""
    events = [{"introduced": "0"}, {"fixed": fixed}]
    return {
        "id": id,
        "summary": f"test advisory for {name}",
        "affected": [
            {
                "package": {"name": name, "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
            }
        ],
    }


CANARY: Advisories = {("jinja2", "2.4.1"): [advisory("PYSEC-2014-8", "jinja2", "2.7.2")]}


@contextmanager
def osv_service(advisories: Advisories, fail: str = "") -> Iterator[tuple[str, list[str]]]:
    """An OSV query endpoint; yields its URL and the names queried. ``fail``: a package name
    whose query gets a 500."""
    queried: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name, version = query["package"]["name"], query["version"]
            queried.append(name)
            if name == fail:
                self.send_error(500)
                return
            vulns = advisories.get((name, version))
            body = json.dumps({"vulns": vulns} if vulns else {}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/query", queried
    finally:
        server.shutdown()
        server.server_close()


def audit(osv_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PIP_AUDIT_SERVICE": "osv", "PIP_AUDIT_OSV_URL": osv_url, **env}
    environment.pop("MEDIKUS_AUDIT_REQUIRED", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )


def installed() -> dict[str, str]:
    names = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"].lower().replace("_", "-").replace(".", "-")
        names[name] = dist.version
    return names


def test_a_vulnerable_installed_package_fails_the_step() -> None:
    version = metadata.version("pyotp")
    advisories = {**CANARY, ("pyotp", version): [advisory("GHSA-test-0001", "pyotp", "99.0")]}
    with osv_service(advisories) as (url, _):
        done = audit(url)
    assert done.returncode == 1, done.stderr
    assert f"VULNERABLE pyotp {version}: GHSA-test-0001 (fixed in: 99.0)" in done.stdout
    assert "1 known vulnerabilities" in done.stdout


def test_a_clean_environment_passes_and_every_package_was_asked_about() -> None:
    with osv_service(CANARY) as (url, queried):
        done = audit(url)
    assert done.returncode == 0, done.stderr
    expected = set(installed()) - {"medikus"}  # our own editable install is not on PyPI
    assert "no known vulnerabilities in" in done.stdout
    assert expected <= set(queried)
    assert "UNREACHABLE" not in done.stderr


@pytest.mark.parametrize("required", [False, True])
def test_an_unreachable_service_warns_loudly(required: bool) -> None:
    env = {"MEDIKUS_AUDIT_REQUIRED": "true"} if required else {}
    done = audit(f"http://127.0.0.1:{free_port()}/v1/query", **env)  # nobody listens there
    assert done.returncode == (2 if required else 0)
    assert "UNREACHABLE" in done.stderr
    assert "NO dependency was audited" in done.stderr
    assert "no known vulnerabilities" not in done.stdout


def test_a_service_that_knows_nothing_is_not_trusted() -> None:
    # Like the PyPI mirror here: it answers, but not even the canary is reported vulnerable.
    with osv_service({}) as (url, queried):
        done = audit(url)
    assert done.returncode == 0
    assert "UNREACHABLE or does not answer properly" in done.stderr
    assert queried == ["jinja2"]  # the real audit never ran


def test_an_audit_that_breaks_off_fails() -> None:
    with osv_service(CANARY, fail="pyotp") as (url, _):
        done = audit(url)
    assert done.returncode == 1
    assert "the audit broke off" in done.stderr


def test_script_is_where_the_makefile_calls_it() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "scripts/audit_dependencies.py" in makefile
    assert Path(SCRIPT).is_file()
