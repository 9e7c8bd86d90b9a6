"""Schemathesis against the live server's own /openapi.json: every operation, with examples, coverage
cases, random fuzzing and stateful sequences, must never answer 5xx and every answer must match the
documented schema. Bounded: a fixed number of cases per operation and a fixed seed (ST_SEED overrides it),
about 20 s on two cores."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ST = Path(sys.executable).parent / "st"
pytestmark = pytest.mark.skipif(
    not ST.exists() and shutil.which("st") is None, reason="schemathesis is in the test extra"
)


def answer_counts(server) -> tuple[float, dict]:
    """(requests answered, {labels of a 5xx series: count}) from the server's own metrics."""
    answered, server_errors = 0.0, {}
    for family in text_string_to_metric_families(server.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "made_http_request_duration_seconds_count":
                answered += sample.value
                if sample.labels["status"].startswith("5"):
                    server_errors[tuple(sorted(sample.labels.items()))] = sample.value
    return answered, server_errors


def test_no_server_error_and_every_answer_matches_the_schema(server, tmp_path):
    command = [
        str(ST) if ST.exists() else "st",
        "run",
        f"{server.url}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        "30",
        "--workers",
        "1",
        "--seed",
        os.environ.get("ST_SEED", "1"),
        "--no-shrink",
        "--generation-database",
        "none",
        "--header",
        "Authorization: Bearer s3cret",  # the admin routes too (the fixture's token)
        "--report",
        "junit",
        "--report-junit-path",
        str(tmp_path / "junit.xml"),
    ]
    answered_before, errors_before = answer_counts(server)
    # run in tmp_path: schemathesis keeps a crash cache in .schemathesis/ of its working directory
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]

    cases = int(re.search(r"(\d+) generated", output).group(1))
    assert cases >= 300, output[-2000:]  # the run really fuzzed
    suites = ElementTree.parse(tmp_path / "junit.xml").getroot()
    tested = {case.get("name") for case in suites.iter("testcase")}
    assert len(tested) >= 18, tested  # every operation of the document
    assert not list(suites.iter("failure")) and not list(suites.iter("error"))

    # the server agrees: it counted every case, answered none with 5xx, and it is still serving
    answered, server_errors = answer_counts(server)
    assert answered - answered_before >= cases
    assert server_errors == errors_before, server_errors  # (the fixture's readiness polls may be 503)
    assert server.client.get("/readyz").status_code == 200
    assert "Traceback" not in server.log_path.read_text()
