#!/usr/bin/env python3
"""The GPU check in one command: prove every CUDA path, measure it, and train the GPU recipe for MNIST.

Runs five steps in order, each bounded in time; a step that fails or runs out of time is reported and
the next one runs anyway. Everything lands in one folder (--out), collected into few files so that it
fits what a borrowed GPU machine sends back (at most 8 files of 16 MiB):

    summary.md                 the table of steps and every figure (also printed at the end)
    logs.tar.gz                each step's full output
    <model>.tar.gz.part-NN     the trained checkpoint, split in 15 MiB parts (`cat` them, then `tar xzf`)

Steps:
  1. environment   GPU, driver, torch, CUDA, the packages in use
  2. tests         `pytest tests/gpu`, then the integration tests with the server on --device
  3. sampling      bench/sampling.py on --device (CUDA graphs, no graphs, reference sampler)
  4. serving       bench/throughput.py over HTTP on --device, batching on and off, a light and the
                   default model
  5. training      one-mask MNIST members trained side by side under a time budget, merged into one
                   mixture stored as int8, evaluated with `made eval`

    make gpu-check GPU_CHECK_BUNDLE=.gpu GPU_CHECK_OUT=out          # on a GPU machine (docs/gpu.md)
    make gpu-check GPU_CHECK_DEVICE=cpu GPU_CHECK_SCALE=tiny GPU_CHECK_OUT=/tmp/check   # here, minutes

--scale full is sized to end within 9 minutes of wall time on an H100/H200; --scale tiny runs the same
steps with small models and counts, on any device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PART_BYTES = 15 * 2**20  # under the 16 MiB a returned file may hold
DEFAULT_SITE = "/tmp/made-gpu-site"


@dataclass(frozen=True)
class Scale:
    """How much each step does, and its share of the time."""

    budgets_s: dict[str, float]  # step -> seconds
    integration_tests: tuple[str, ...]  # pytest's arguments
    sampling_args: tuple[str, ...]
    serving_models: tuple[tuple[str, str], ...]  # (role, bundled model)
    serving_args: tuple[str, ...]
    members: int  # one-mask MNIST members trained side by side, then merged
    member_args: tuple[str, ...]
    member_seconds: float  # each member's time budget (made train --max-seconds)


# The full scale's budgets add up to 9 minutes. Training: members of 8000 units (6.6 MB each as masked
# int8), dropout 0.5 and a weight average, as the shipped 6000-unit members were trained on CPU
# (docs/results.md), with 40 epochs at most; six of them make a ~40 MB mixture.
SCALES = {
    "full": Scale(
        budgets_s={"environment": 30, "tests": 140, "sampling": 60, "serving": 130, "training": 180},
        # the integration tests whose server or engine computes on the device (the rest check validation,
        # codecs and schemas, which no device changes)
        integration_tests=(
            "tests/api/test_endpoints.py", "tests/api/test_inpainting.py",
            "tests/api/test_load_and_faults.py", "tests/api/test_model_swap.py", "tests/api/test_engine.py",
            "tests/api/test_batcher.py",
        ),
        sampling_args=(),
        serving_models=(("light", "uci-mushrooms"), ("default", "binarized-mnist")),
        serving_args=("--clients", "16", "--requests-per-client", "40", "--max-seconds", "8"),
        members=6,
        member_args=(
            "--hidden", "8000", "--order", "random", "--direct", "--dropout", "0.5", "--epochs", "40",
            "--patience", "0", "--ema-decay", "0.999", "--input-shape", "28", "28",
        ),
        member_seconds=110,
    ),
    "tiny": Scale(
        budgets_s={"environment": 30, "tests": 90, "sampling": 45, "serving": 45, "training": 90},
        integration_tests=(
            "tests/api/test_endpoints.py", "-k", "log_prob_matches_the_library or sampling_is_seeded",
        ),
        sampling_args=("--quick", "--batch", "8", "--bundled", "--max-dims", "200"),  # one small architecture
        serving_models=(("light", "uci-mushrooms"),),
        serving_args=(
            "--clients", "4", "--requests-per-client", "5", "--max-seconds", "3", "--warmup-requests", "2",
        ),
        members=2,
        member_args=(
            "--hidden", "32", "--order", "random", "--direct", "--epochs", "1", "--batch-size", "1000",
            "--patience", "0", "--input-shape", "28", "28",
        ),
        member_seconds=20,
    ),
}  # fmt: skip


@dataclass
class Outcome:
    status: str  # passed | failed | timed out | skipped
    result: str  # one line for the table
    details: list[str] = field(default_factory=list)  # markdown for the step's section


class Check:
    """Runs the steps' commands with a deadline each, logging their output under <out>/logs."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.scale = SCALES[args.scale]
        self.out = Path(args.out).resolve()
        self.logs = self.out / "logs"
        self.work = Path(tempfile.mkdtemp(prefix="made-gpu-check-"))
        self.env = self._environment()
        self.deadline = 0.0  # of the step being run

    def _environment(self) -> dict[str, str]:
        """Every command's environment: the packages (bundle site, then this tree), `made` on PATH, the
        device for the server and the tests, and no stray settings from the caller's shell."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MADE_")}
        paths = [*([self.args.site] if self.args.bundle else []), str(ROOT)]
        env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        made = bin_dir / "made"  # the console script, for a tree that is not pip-installed
        made.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m service.cli "$@"\n')
        made.chmod(0o755)
        env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
        env["MADE_DEVICE"] = self.args.device
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(
        self, log_name: str, argv: list[str], *, env: dict | None = None, timeout: float | None = None
    ) -> tuple[int | None, str]:
        """Run argv from the repository root; returns (exit status or None when it ran out of time, its
        output). Its output is appended to logs/<log_name>.log."""
        timeout = max(1.0, self.remaining() if timeout is None else min(timeout, self.remaining()))
        log(f"$ {shlex.join(argv)}  (at most {timeout:.0f} s)")
        return self.finish(log_name, argv, self.start(argv, env=env), timeout)

    def start(self, argv: list[str], *, env: dict | None = None) -> subprocess.Popen:
        """argv started from the repository root, its output (stdout and stderr) kept for `finish`."""
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a timeout stops its children (servers) too
        )

    def finish(
        self, log_name: str, argv: list[str], process: subprocess.Popen, timeout: float
    ) -> tuple[int | None, str]:
        """Wait for a started process at most `timeout` seconds (then stop it and its children); append
        its command and output to logs/<log_name>.log; returns (exit status or None, output)."""
        try:
            output, _ = process.communicate(timeout=timeout)
            status: int | None = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            output, _ = process.communicate()
            status = None
        with open(self.logs / f"{log_name}.log", "a") as log_file:
            log_file.write(f"\n$ {shlex.join(argv)}\n{output}")
            log_file.write(f"\n[exit status: {'timed out' if status is None else status}]\n")
        return status, output


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def status_of(code: int | None) -> str:
    return "timed out" if code is None else ("passed" if code == 0 else "failed")


def worst(*statuses: str) -> str:
    for status in ("timed out", "failed", "skipped"):
        if status in statuses:
            return status
    return "passed"


def last_lines(text: str, n: int = 15) -> list[str]:
    return ["```", *text.strip().splitlines()[-n:], "```"]


# ---- 1. environment ----------------------------------------------------------------------------------
def step_environment(check: Check) -> Outcome:
    probe = r"""
import importlib.metadata as m, json, platform, torch
facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda (torch)": torch.version.cuda,
         "cuda available": torch.cuda.is_available(), "cpu threads": torch.get_num_threads()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    facts |= {"gpu": p.name, "gpu memory GiB": round(p.total_memory / 2**30, 1),
              "compute capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
              "cudnn": torch.backends.cudnn.version()}
for name in ("numpy", "safetensors", "fastapi", "starlette", "uvicorn", "pydantic", "pydantic-settings",
             "prometheus-client", "httpx", "pytest"):
    try:
        facts[name] = m.version(name)
    except m.PackageNotFoundError:
        facts[name] = "missing"
print(json.dumps(facts))
"""
    code, output = check.run("1-environment", [sys.executable, "-c", probe])
    facts: dict = {}
    if code == 0:
        facts = json.loads(output.strip().splitlines()[-1])
    if shutil.which("nvidia-smi"):
        smi_code, smi = check.run(
            "1-environment",
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            timeout=20,
        )
        if smi_code == 0 and smi.strip():
            facts["nvidia-smi"] = smi.strip().splitlines()[0]
    facts |= {"machine": platform.machine(), "cpus": os.cpu_count(), "device asked for": check.args.device}
    details = ["| fact | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in facts.items())]
    missing = [k for k, v in facts.items() if v == "missing"]
    if code != 0:
        return Outcome(status_of(code), "the probe failed (torch not importable?)", last_lines(output))
    if check.args.device.startswith("cuda") and not facts.get("cuda available"):
        return Outcome("failed", f"CUDA is not available to torch {facts.get('torch')}", details)
    if missing:
        return Outcome("failed", f"missing packages: {', '.join(missing)} (see docs/gpu.md)", details)
    where = facts.get("gpu") or f"{facts['machine']} CPU, {facts['cpu threads']} threads"
    return Outcome(
        "passed", f"{where}; torch {facts['torch']}, CUDA {facts.get('cuda (torch)') or '-'}", details
    )


# ---- 2. tests ----------------------------------------------------------------------------------------
PROGRESS = re.compile(r"^([.FEsxX]+)\s*(\[\s*\d+%\])?$")  # pytest -q's progress lines


def pytest_counts(junit: Path, output: str) -> dict[str, int]:
    """passed/failed/skipped from the JUnit report, or, for a run killed before writing it, from the
    progress characters it printed."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if not junit.exists():
        marks = "".join(m.group(1) for line in output.splitlines() if (m := PROGRESS.match(line.strip())))
        counts["passed"] = marks.count(".")
        counts["failed"] = marks.count("F") + marks.count("E")
        counts["skipped"] = marks.count("s") + marks.count("x") + marks.count("X")
        return counts
    root = ElementTree.parse(junit).getroot()
    for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
        tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts["failed"] += failed
        counts["skipped"] += skipped
        counts["passed"] += tests - failed - skipped
    return counts


def failed_tests(junit: Path) -> list[str]:
    if not junit.exists():
        return []
    root = ElementTree.parse(junit).getroot()
    return [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]


def step_tests(check: Check) -> Outcome:
    suites = [("CUDA tests", ["tests/gpu"]), ("integration tests", list(check.scale.integration_tests))]
    statuses, parts, details = [], [], []
    for index, (label, paths) in enumerate(suites):
        junit = check.work / f"junit-{index}.xml"
        # the CUDA tests get half of what is left, the integration tests the rest
        share = check.remaining() / 2 if index == 0 else None
        code, output = check.run(
            "2-tests",
            [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
            timeout=share,
        )
        counts = pytest_counts(junit, output)
        # all skipped is pytest's success too; no tests at all (5) is not
        statuses.append("passed" if code == 0 else status_of(code))
        summary = ", ".join(f"{v} {k}" for k, v in counts.items())
        parts.append(f"{label}: {summary}")
        details += [f"**{label}** (`pytest {shlex.join(paths)}`, MADE_DEVICE={check.args.device}): {summary}"]
        if code is None:
            details.append("- timed out; counts are of the tests that ended (see logs/2-tests.log)")
        details += [f"- failed: `{name}`" for name in failed_tests(junit)]
        details += last_lines(output, 3) + [""]
    return Outcome(worst(*statuses), "; ".join(parts), details)


# ---- 3. sampling -------------------------------------------------------------------------------------
def markdown_tables(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def step_sampling(check: Check) -> Outcome:
    code, output = check.run(
        "3-sampling",
        [sys.executable, "bench/sampling.py", "--device", check.args.device, *check.scale.sampling_args],
    )
    table = markdown_tables(output)
    rows = table[2:]
    identical = sum(1 for r in rows if r.rstrip(" |").endswith("yes"))
    result = f"{len(rows)} configurations; fast and reference samplers identical in {identical}"
    if code != 0:
        result = f"bench/sampling.py {status_of(code)}; " + result
    if rows and identical < len(rows):
        return Outcome("failed", result, table + last_lines(output, 5))
    return Outcome(status_of(code), result, table + last_lines(output, 1))


# ---- 4. serving --------------------------------------------------------------------------------------
def step_serving(check: Check) -> Outcome:
    models = check.scale.serving_models
    repository = check.work / "serving-models"
    repository.mkdir()
    for _, name in models:
        source = ROOT / "models" / name
        if not source.is_dir():
            return Outcome("failed", f"no bundled model models/{name}")
        (repository / name).symlink_to(source)
    statuses, results, details = [], [], []
    for index, (role, name) in enumerate(models):
        out = check.work / f"serving-{name}.md"
        share = check.remaining() / (len(models) - index)
        code, output = check.run(
            "4-serving",
            [
                sys.executable, "bench/throughput.py", "--model-repository", str(repository), "--model", name,
                "--modes", "batching on", "batching off", *check.scale.serving_args, "--out", str(out),
            ],
            timeout=share,
        )  # fmt: skip
        statuses.append(status_of(code))
        table = markdown_tables(output)
        rows = {r.split("|")[1].strip(): r.split("|") for r in table[2:]}
        figures = [
            f"{mode}: {cells[6].strip()} rows/s, p50 {cells[8].strip()} ms, {cells[11].strip()} errors"
            for mode, cells in rows.items()
            if len(cells) > 11
        ]
        results.append(f"{name} ({role}): " + ("; ".join(figures) or status_of(code)))
        details += [f"**{name}** ({role} model), over HTTP on loopback, server on {check.args.device}:", ""]
        details += (out.read_text().splitlines() if out.exists() else last_lines(output)) + [""]
    return Outcome(worst(*statuses), " · ".join(results), details)


# ---- 5. training -------------------------------------------------------------------------------------
def training_data(check: Check) -> Path | None:
    candidates = [check.args.data] if check.args.data else []
    if check.args.bundle:
        candidates.append(str(Path(check.args.bundle) / "data" / "binarized_mnist.npz"))
    candidates.append(str(ROOT.parent / "shared" / "data" / "binarized_mnist.npz"))
    return next((Path(c).resolve() for c in candidates if Path(c).is_file()), None)


def last_json(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def step_training(check: Check) -> Outcome:
    data = training_data(check)
    if data is None:
        return Outcome("skipped", "no binarized_mnist.npz (bench/gpu_bundle.sh fetch puts it in .gpu/data)")
    scale, work = check.scale, check.work / "training"
    work.mkdir()
    members = [work / f"member-{seed}" for seed in range(scale.members)]
    # Side by side: one member alone keeps neither a GPU nor 16 cores busy at 100 rows a step.
    threads = str(max(1, (os.cpu_count() or 2) // scale.members))
    started = []
    for seed, out in enumerate(members):
        argv = [
            "made", "train", "--data", str(data), "--out", str(out), *scale.member_args, "--seed", str(seed),
            "--max-seconds", str(scale.member_seconds), "--device", check.args.device, "--no-progress",
        ]  # fmt: skip
        log(f"$ {shlex.join(argv)}")
        started.append((argv, check.start(argv, env={"OMP_NUM_THREADS": threads})))
    member_results, failures = [], []
    for seed, (argv, process) in enumerate(started):
        # what is left of the budget, less the time merging, evaluating and packing need
        timeout = max(1.0, check.remaining() - 30)
        code, output = check.finish(f"5-training-member-{seed}", argv, process, timeout)
        if code is None:
            failures.append(f"member {seed} ran out of time")
        elif code != 0:
            failures.append(f"member {seed} exited with {code}")
        else:
            member_results.append(last_json(output))
    if failures:
        return Outcome("failed", "; ".join(failures), ["See logs/5-training-member-*.log."])

    mixture = work / f"binarized-mnist-gpu-{scale.members}x"
    code, output = check.run(
        "5-training",
        ["made", "merge", *map(str, members), "--out", str(mixture), "--data", f"{data}:valid_x",
         "--weights-dtype", "int8"],
    )  # fmt: skip
    if code != 0:
        return Outcome(status_of(code), "made merge failed", last_lines(output))
    code, output = check.run(
        "5-training", ["made", "eval", "--model", str(mixture), "--data", f"{data}:valid_x"]
    )
    evaluated = last_json(output)
    if code != 0 or "nll" not in evaluated:
        return Outcome(status_of(code) if code else "failed", "made eval failed", last_lines(output))
    size = sum(f.stat().st_size for f in mixture.iterdir())
    parts = pack(mixture, check.out / f"{mixture.name}.tar.gz")
    lines = [
        f"`made train ... {shlex.join(scale.member_args)} --max-seconds {scale.member_seconds:g}` "
        f"× {scale.members} (seeds 0..{scale.members - 1}, side by side on {check.args.device}), then "
        f"`made merge --weights-dtype int8` and `made eval` on the validation split.",
        "",
        "| member | validation NLL | epochs | best epoch | seconds |",
        "|---|---|---|---|---|",
        *(
            f"| {seed} | {r.get('best_valid_nll')} | {r.get('epochs')} | {r.get('best_epoch')} | "
            f"{r.get('seconds')} |"
            for seed, r in enumerate(member_results)
        ),
        f"| **mixture** (int8) | **{evaluated['nll']:.4f}** | | | |",
        "",
        f"Stored: {size / 1e6:.1f} MB in {len(parts)} part(s): "
        f"`cat {mixture.name}.tar.gz.part-* | tar xz` gives `{mixture.name}/`.",
    ]
    nll = evaluated["nll"]
    return Outcome(
        "passed", f"{scale.members} members merged: validation NLL {nll:.4f}, {size / 1e6:.1f} MB int8", lines
    )


def pack(directory: Path, archive: Path) -> list[Path]:
    """directory as archive.part-00, -01, ... of at most PART_BYTES each."""
    whole = archive.parent / f".{archive.name}"
    with tarfile.open(whole, "w:gz", compresslevel=1) as tar:
        tar.add(directory, arcname=directory.name)
    parts = []
    with open(whole, "rb") as source:
        while chunk := source.read(PART_BYTES):
            part = archive.with_name(f"{archive.name}.part-{len(parts):02d}")
            part.write_bytes(chunk)
            parts.append(part)
    whole.unlink()
    return parts


STEPS: list[tuple[str, Callable[[Check], Outcome]]] = [
    ("environment", step_environment),
    ("tests", step_tests),
    ("sampling", step_sampling),
    ("serving", step_serving),
    ("training", step_training),
]


# ---- the run -----------------------------------------------------------------------------------------
def install_bundle(bundle: str, site: str) -> None:
    """The wheels the machine lacks (bench/gpu_bundle.sh fetch), unpacked into site by that script's
    `install`, with this Python."""
    installed = subprocess.run(
        [str(ROOT / "bench" / "gpu_bundle.sh"), "install", bundle, site],
        env={**os.environ, "PYTHON": sys.executable},
    )
    if installed.returncode != 0:  # the script said why
        sys.exit(f"could not install the wheels of {bundle} into {site}")


def git_commit() -> str:
    """The checkout's commit; a copied tree without .git (a borrowed GPU machine's) is told it in
    GPU_CHECK_COMMIT."""
    if os.environ.get("GPU_CHECK_COMMIT"):
        return os.environ["GPU_CHECK_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"


def summary(check: Check, rows: list[tuple[str, Outcome, float, float]], started: str) -> str:
    args = check.args
    lines = [
        "# made-service GPU check",
        "",
        f"- started {started}, device `{args.device}`, scale `{args.scale}`, commit {git_commit()}",
        f"- command: `{shlex.join(['bench/gpu_check.py', *sys.argv[1:]])}`",
        f"- wall time of the steps: {sum(r[2] for r in rows):.0f} s (budget {sum(r[3] for r in rows):.0f} s)",
        "",
        "| step | status | seconds | budget s | result |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {outcome.status} | {seconds:.0f} | {budget:.0f} | {outcome.result} |"
            for name, outcome, seconds, budget in rows
        ),
        "",
    ]
    for name, outcome, _, _ in rows:
        lines += [f"## {name}", "", *outcome.details, ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--scale", choices=list(SCALES), default="full")
    parser.add_argument("--out", required=True, help="folder for summary.md, logs.tar.gz and the model")
    parser.add_argument("--bundle", help="folder from bench/gpu_bundle.sh fetch: install its wheels first")
    parser.add_argument("--site", default=DEFAULT_SITE, help="where --bundle's wheels are unpacked")
    parser.add_argument("--data", help="binarized_mnist.npz (default: --bundle's, else ../shared/data's)")
    parser.add_argument("--steps", nargs="+", choices=[s for s, _ in STEPS], help="only these steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bundle:
        install_bundle(args.bundle, args.site)
    check = Check(args)
    check.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(check.logs, ignore_errors=True)
    check.logs.mkdir()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    rows = []
    try:
        for name, step in STEPS:
            budget = check.scale.budgets_s[name]
            if args.steps and name not in args.steps:
                continue
            log(f"step {name} (at most {budget:.0f} s)")
            begun = time.monotonic()
            check.deadline = begun + budget
            try:
                outcome = step(check)
            except Exception as exc:  # noqa: BLE001  (reported; the next step runs anyway)
                outcome = Outcome("failed", f"{type(exc).__name__}: {exc}")
            seconds = time.monotonic() - begun
            log(f"step {name}: {outcome.status} in {seconds:.0f} s: {outcome.result}")
            rows.append((name, outcome, seconds, budget))
    finally:
        text = summary(check, rows, started)
        (check.out / "summary.md").write_text(text)
        with tarfile.open(check.out / "logs.tar.gz", "w:gz") as tar:
            tar.add(check.logs, arcname="logs")
        shutil.rmtree(check.logs)
        shutil.rmtree(check.work, ignore_errors=True)
        print(text)
    return 0 if all(o.status in ("passed", "skipped") for _, o, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
