"""Plain helpers of the integration tests: small models saved into a model repository, and the real
server as a subprocess (`made serve`, the container's command) on 127.0.0.1 and a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from service import calibration, checkpoint
from service.devices import resolve_device
from service.made import build
from tests.helpers import markov_chain, take_training_steps

# The console script installed beside this Python; where the project is not installed (the GPU check runs
# the suite from a source tree with its packages on PYTHONPATH), the `made` on PATH.
_BESIDE = Path(sys.executable).parent / "made"
MADE = str(_BESIDE) if _BESIDE.exists() else (shutil.which("made") or str(_BESIDE))
SERVE_COMMAND = [MADE, "serve"]
# The device the test servers compute on: the one MADE_DEVICE asks for (the GPU check sets it), else auto.
SERVER_DEVICE = str(resolve_device(os.environ.get("MADE_DEVICE", "auto")))
# The slow model (save_slow) is slow on purpose, to make queueing, deadlines and draining observable: on
# a GPU it would not be, so its servers compute on the CPU wherever the tests run.
SLOW_MODEL_ENV = {"MADE_DEVICE": "cpu"}
TRAINING_DATA = "/srv/private/tiny-train.npz"


def save_tiny(path: Path, seed: int = 0, steps: int = 200, n_dims: int = 8, **options) -> None:
    """A calibrated binary model over D=8 (2x4 'images'; D/2 columns for another even D), order- and
    connectivity-agnostic, 4 masks."""
    torch.manual_seed(seed)
    settings = (
        dict(
            hidden_sizes=(32, 32),
            n_masks=4,
            eval_masks=2,
            order="random",
            direct_connections=True,
            mask_conditioning=True,
            seed=seed,
        )
        | options
    )
    model = build(n_dims, "bernoulli", **settings)
    data = markov_chain(400, n_dims, seed=seed)
    take_training_steps(model, data, steps=steps)
    K = model.config.eval_masks
    held_out = markov_chain(300, n_dims, seed=seed + 1)
    shape = [2, n_dims // 2]
    context = calibration.ContextCounts.fit(data, shape, data_file=TRAINING_DATA)  # for nll_or_context
    nll, code_length = calibration.held_out_scores(model, [held_out], K, context.model(n_dims, shape))
    calibrated = calibration.calibrate(nll, K, code_length=code_length, context=context)
    checkpoint.save(
        model,
        path,
        input_shape=shape,
        calibration=calibrated,
        # where it was trained from: what only the admin may see through the API
        training={"seed": seed, "command": f"made train --data {TRAINING_DATA}", "data_file": TRAINING_DATA},
    )


def save_slow(path: Path) -> None:
    """A deliberately heavy model (untrained): one request with masks=32 and 1024 rows takes seconds on
    two CPU cores, which makes queueing, deadlines and draining observable."""
    torch.manual_seed(0)
    model = build(128, "bernoulli", hidden_sizes=(2048, 2048), n_masks=32, eval_masks=1, order="random")
    checkpoint.save(model, path)


def save_gaussian(path: Path) -> None:
    torch.manual_seed(0)
    data = torch.randn(300, 3) * torch.tensor([1.0, 2.0, 0.5]) + 4
    model = build(3, "gaussian", hidden_sizes=(16,), shift=data.mean(0), scale=data.std(0))
    take_training_steps(model, data, steps=20)
    checkpoint.save(model, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, repository: Path, *flags: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = repository.parent / f"server-{self.port}.log"
        environment = {**os.environ, "OMP_NUM_THREADS": "2", "MADE_LOG_LEVEL": "warning"} | (env or {})
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [*SERVE_COMMAND, "--model-repository", str(repository), "--port", str(self.port), *flags],
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/readyz").status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log_path.read_text()}")

    def metric(self, name: str, **labels) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.client.get("/metrics").text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
        self.log.close()
        return self.process.returncode


@contextlib.contextmanager
def running(repository: Path, *flags: str, env: dict | None = None, ready: bool = True):
    server = Server(repository, *flags, env=env)
    try:
        if ready:
            server.wait_ready()
        yield server
    finally:
        server.stop()


def copy_version(repository: Path, name: str, source: Path, version: int) -> Path:
    """Drop a version into the repository the way an operator should: build aside, rename into place."""
    staging = repository / name / f".staging-{version}"
    shutil.copytree(source, staging)
    target = repository / name / str(version)
    staging.rename(target)
    return target
