"""The GPU check (bench/gpu_check.py, `make gpu-check`) runs here, on CPU at its tiny scale, so that it
cannot rot before a GPU is at hand; and its step runner reports what fails without stopping."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service import checkpoint
from service.training import mean_nll
from tests.helpers import markov_chain

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("environment", "tests", "sampling", "serving", "training")


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_rows(summary: str) -> dict[str, list[str]]:
    """step -> its cells in the summary's table."""
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in STEPS and len(cells) == 5:
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_on_cpu_at_tiny_scale(tmp_path):
    # 28x28 binary rows with known structure stand in for MNIST (tests never read ../shared/data)
    data = tmp_path / "mnist-like.npz"
    np.savez(
        data,
        train_x=markov_chain(2000, 784, seed=1).numpy().astype(np.uint8),
        valid_x=markov_chain(500, 784, seed=2).numpy().astype(np.uint8),
    )
    out = tmp_path / "check"
    argv = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--scale", "tiny", "--out", str(out)]
    done = subprocess.run([*argv, "--data", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = (out / "summary.md").read_text()
    assert done.returncode == 0, summary + done.stderr[-3000:]

    rows = table_rows(summary)
    assert list(rows) == list(STEPS), summary
    assert all(cells[1] == "passed" for cells in rows.values()), summary
    assert "integration tests: 2 passed, 0 failed" in rows["tests"][4]
    assert "1 configurations; fast and reference samplers identical in 1" in rows["sampling"][4]
    assert "batching on:" in rows["serving"][4] and "batching off:" in rows["serving"][4]
    assert "0 errors" in rows["serving"][4] and " 1 errors" not in rows["serving"][4]

    # Few files: the summary, the logs, and the trained mixture in parts that join back into a checkpoint
    # that loads and scores the validation rows as the summary says.
    parts = sorted(out.glob("*.tar.gz.part-*"))
    assert {p.name for p in out.iterdir()} == {"summary.md", "logs.tar.gz", *(p.name for p in parts)}
    assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    (directory,) = (tmp_path / "model").iterdir()
    model, config = checkpoint.load(directory)
    assert config.n_masks == 2 and config.weights_dtype == "int8"  # two one-mask members, merged
    nll = mean_nll(model, markov_chain(500, 784, seed=2).float(), masks=2)
    reported = float(re.search(r"validation NLL ([0-9.]+)", rows["training"][4]).group(1))
    assert abs(reported - nll) < 1e-3, (reported, nll)
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("2-tests.log") for n in names) and any("training-member-1" in n for n in names)


def test_a_failing_or_overrunning_step_is_reported_and_the_later_steps_still_run(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()

    def failing(check):
        raise RuntimeError("no device here")

    def overrunning(check):  # a command that would outlast its step's budget
        code, _ = check.run("overrun", [sys.executable, "-c", "import time; time.sleep(60)"])
        return gpu_check.Outcome(gpu_check.status_of(code), "slept")

    def passing(check):
        return gpu_check.Outcome("passed", "measured 42")

    budgets = {"environment": 5, "tests": 1, "sampling": 5, "serving": 5, "training": 5}
    monkeypatch.setitem(gpu_check.SCALES, "tiny", replace(gpu_check.SCALES["tiny"], budgets_s=budgets))
    monkeypatch.setattr(
        gpu_check, "STEPS", [("environment", failing), ("tests", overrunning), ("sampling", passing)]
    )
    status = gpu_check.main(["--device", "cpu", "--scale", "tiny", "--out", str(tmp_path)])
    rows = table_rows((tmp_path / "summary.md").read_text())
    assert status == 1
    assert rows["environment"][1] == "failed" and "RuntimeError: no device here" in rows["environment"][4]
    assert rows["tests"][1] == "timed out" and float(rows["tests"][2]) < 10
    assert rows["sampling"][1:2] == ["passed"] and rows["sampling"][4] == "measured 42"


def test_make_gpu_check_passes_its_settings_to_the_script():
    dry_run = subprocess.run(
        ["make", "-n", "gpu-check", "GPU_CHECK_DEVICE=cpu", "GPU_CHECK_SCALE=tiny", "GPU_CHECK_OUT=/tmp/o",
         "GPU_CHECK_BUNDLE=.gpu"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    command = " ".join(dry_run.replace("\\\n", " ").split())
    assert "bench/gpu_check.py --device cpu --scale tiny --out /tmp/o --bundle .gpu" in command


def test_test_counts_come_from_the_junit_report_or_from_the_progress_of_a_killed_run(tmp_path):
    gpu_check = load_gpu_check()
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite tests="7" failures="1" errors="1" skipped="2">'
        '<testcase classname="t" name="a"><failure/></testcase><testcase classname="t" name="b"><error/>'
        "</testcase></testsuite></testsuites>"
    )
    assert gpu_check.pytest_counts(junit, "") == {"passed": 3, "failed": 2, "skipped": 2}
    assert gpu_check.failed_tests(junit) == ["t::a", "t::b"]
    killed = "..F.s.   [ 40%]\n....\n"  # pytest -q's progress; no report: it never finished
    assert gpu_check.pytest_counts(tmp_path / "none.xml", killed) == {
        "passed": 8,
        "failed": 1,
        "skipped": 1,
    }
