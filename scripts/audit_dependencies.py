"""Known-vulnerability audit of the installed environment with pip-audit (`make audit`).

pip-audit alone cannot tell "no known vulnerabilities" from "the service told us nothing": against
a PyPI mirror that does not serve the per-version JSON API it reports every package as "not found
on PyPI", prints "No known vulnerabilities found" and exits 0. So this script first asks the
service about a canary with published advisories (jinja2 2.4.1: CVE-2014-1402, CVE-2016-10745,
...). Only if the canary is reported vulnerable does the real audit count:

- exit 1: a vulnerability found, or a package the service could not audit, or the audit broke off;
- exit 0: every installed package audited, no known vulnerability;
- service unreachable or not answering properly (the canary is not reported): a loud warning and
  exit 0, because a build must not depend on a service this machine cannot reach; exit 2 instead
  when MEDIKUS_AUDIT_REQUIRED=true (for a CI that has the network).

Environment: PIP_AUDIT_SERVICE (osv, the default, or pypi), PIP_AUDIT_OSV_URL (an OSV mirror),
PIP_AUDIT_TIMEOUT (seconds per request, default 15).
"""

from __future__ import annotations

import json
import os
import subprocess  # nosec B404 # runs pip-audit from this virtual environment only
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CANARY = "jinja2==2.4.1"
OWN = "medikus"
BANNER = "!" * 78


@dataclass(frozen=True)
class Run:
    code: int
    report: dict[str, Any] | None  # pip-audit's JSON, None when it broke off
    error: str


def pip_audit(args: list[str], cache: Path) -> Run:
    service = os.environ.get("PIP_AUDIT_SERVICE", "osv")
    command = [
        str(Path(sys.executable).with_name("pip-audit")),
        *("-s", service, "-f", "json", "--progress-spinner", "off"),
        *("--cache-dir", str(cache), "--timeout", os.environ.get("PIP_AUDIT_TIMEOUT", "15")),
    ]
    if service == "osv" and os.environ.get("PIP_AUDIT_OSV_URL"):
        command += ["--osv-url", os.environ["PIP_AUDIT_OSV_URL"]]
    done = subprocess.run(  # nosec B603 # fixed program, arguments from this script
        [*command, *args], capture_output=True, text=True, timeout=900, check=False
    )
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = None
    lines = done.stderr.strip().splitlines()
    return Run(done.returncode, report, lines[-1] if lines else "")


def vulnerable(report: dict[str, Any] | None) -> list[tuple[str, str, list[str]]]:
    found = []
    for dep in (report or {}).get("dependencies", []):
        for vuln in dep.get("vulns", []):
            fixes = vuln.get("fix_versions", [])
            found.append((f"{dep['name']} {dep.get('version', '?')}", vuln["id"], fixes))
    return found


def skipped(report: dict[str, Any] | None) -> list[str]:
    """Packages not audited; our own editable install is not a PyPI release and does not count."""
    return [
        f"{d['name']}: {d['skip_reason']}"
        for d in (report or {}).get("dependencies", [])
        if "skip_reason" in d and not (d["name"] == OWN and "editable" in d["skip_reason"])
    ]


def service_works(cache: Path) -> tuple[bool, str]:
    """Whether the service reports the canary's published vulnerabilities."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "canary.txt"
        requirements.write_text(CANARY + "\n")
        run = pip_audit(["-r", str(requirements), "--no-deps", "--disable-pip"], cache)
    if vulnerable(run.report):
        return True, ""
    if run.report is None:
        return False, run.error or f"pip-audit exited {run.code} without a report"
    reasons = skipped(run.report)
    return False, reasons[0] if reasons else f"{CANARY} reported without vulnerabilities"


def unreachable(reason: str) -> int:
    required = os.environ.get("MEDIKUS_AUDIT_REQUIRED", "").lower() in ("1", "true", "yes")
    service = os.environ.get("PIP_AUDIT_SERVICE", "osv")
    print(
        f"{BANNER}\n!! pip-audit: the vulnerability service ({service}) is UNREACHABLE or does not"
        f" answer properly.\n!! NO dependency was audited. ({reason})\n!! The canary {CANARY} was"
        " not reported vulnerable, so a clean result would mean nothing.\n"
        + (
            "!! MEDIKUS_AUDIT_REQUIRED is set: failing.\n"
            if required
            else "!! Not failing the build for this (set MEDIKUS_AUDIT_REQUIRED=true to fail).\n"
        )
        + BANNER,
        file=sys.stderr,
    )
    return 2 if required else 0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        works, reason = service_works(cache)
        if not works:
            return unreachable(reason)
        run = pip_audit(["--skip-editable"], cache)
    if run.report is None:
        print(f"pip-audit: the audit broke off: {run.error}", file=sys.stderr)
        return 1
    found, unaudited = vulnerable(run.report), skipped(run.report)
    for package, id, fixes in found:
        print(f"VULNERABLE {package}: {id} (fixed in: {', '.join(fixes) or 'no fix yet'})")
    for reason in unaudited:
        print(f"NOT AUDITED {reason}")
    count = sum(1 for d in run.report.get("dependencies", []) if "skip_reason" not in d)
    if found or unaudited:
        print(f"pip-audit: {len(found)} known vulnerabilities, {len(unaudited)} not audited.")
        return 1
    print(f"pip-audit: no known vulnerabilities in {count} installed packages.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
