#!/usr/bin/env python3
"""Fingerprint every answer of made-service that a behaviour-preserving refactor must keep identical.

Record a fingerprint of a checkout (its `.venv/bin/made` and its bundled `models/`):

    .venv/bin/python bench/answers.py --repo /path/to/checkout [--data-dir DIR] --out fingerprint.json

and compare two fingerprints (exit status 1 if anything differs):

    .venv/bin/python bench/answers.py --compare old.json new.json

What is recorded, for every model in `<repo>/models/<name>/<highest version>`:

* CLI (the repo's `.venv/bin/made` as a subprocess, `--device cpu`):
  - `made eval` on the model's full validation split, with the model's default ensemble and with
    `--masks 1` (models with several masks): the printed JSON (nll, bits_per_dim, n, masks);
  - `made sample -n 64 --seed 123` with `--sampler fast` and `--sampler reference`: sha256 of the `.npy`
    file's bytes, its dtype and shape (and whether both samplers drew the same array);
  - `made score` of the first 500 validation rows: the float64 log-probabilities themselves.
* HTTP: the real server, `made serve --model-repository <repo>/models` on a free port of 127.0.0.1
  (MADE_DEVICE=cpu, every other MADE_* variable removed from its environment), after GET /readyz is 200:
  a fixed set of log-prob, anomaly, sample (JSON, .npy, PNG), conditional sample, v2 and model-info
  requests and error cases per model (see `model_requests`), all seeded. For each answer: the status,
  the headers X-Model-Version, X-Masks, X-Seed, X-Threshold, X-FPR and Content-Type, and the body: JSON
  parsed (load-timing fields `loaded_at` and `load_seconds` dropped), `.npy` as sha256 + dtype + shape
  (float arrays also with their values), anything else (PNG) as sha256 + size.

Comparison rules: every recorded item is compared; numbers (also inside JSON bodies, `.npy` float values
and headers that parse as floats) must agree within 1e-4 absolute (arrays: the maximum absolute difference
is reported), integers, strings, booleans, nulls, hashes, dtypes and shapes exactly; an item present on
one side only is a difference. `meta` (commit, date, timings) is shown but not compared.

Run it with the project's `.venv/bin/python` (numpy, and httpx for bench/throughput.py's `Server`, which
starts and stops the server for it). Seeds are fixed, so two runs on the same code, machine and device
give the same fingerprint.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Server, free_port  # noqa: E402  (a sibling script: the server's start and stop)

TOLERANCE = 1e-4
SAMPLE_N = 64
SAMPLE_SEED = 123
REFERENCE_N = 64  # the reference sampler does D network passes per mask; lower this if it is too slow
SCORE_ROWS = 500
HTTP_ROWS = 4
HTTP_SEED = 7
HEADERS = ("X-Model-Version", "X-Masks", "X-Seed", "X-Threshold", "X-FPR", "Content-Type")
DROPPED_FIELDS = {"loaded_at", "load_seconds"}
READY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 600.0

# Validation data of each shipped model, relative to --data-dir.
DATA_FILES = {
    "binarized-mnist": "binarized_mnist.npz",
    "binarized-mnist-any-order": "binarized_mnist.npz",
    "uci-dna": "uci/dna.npz",
    "uci-mushrooms": "uci/mushrooms.npz",
    "uci-nips": "uci/nips.npz",
}


# ---------------------------------------------------------------------------------------------- helpers


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def validation_rows(path: Path) -> np.ndarray:
    """The (N, D) uint8 validation rows of one of the ../shared/data files (packed MNIST unpacked)."""
    with np.load(path) as data:
        x = data["valid_x"]
        n_dims = int(data["n_dims"]) if "n_dims" in data else x.shape[1]
    if x.shape[1] != n_dims:  # packed with np.packbits
        x = np.unpackbits(x, axis=1)[:, :n_dims]
    return np.ascontiguousarray(x, dtype=np.uint8)


def model_dirs(repo: Path) -> dict[str, Path]:
    """name -> checkpoint directory of the highest complete version, for every model in repo/models."""
    found = {}
    for model in sorted((repo / "models").iterdir()):
        versions = sorted(
            (int(v.name), v)
            for v in model.iterdir()
            if v.is_dir() and v.name.isdigit() and (v / "config.json").exists()
        )
        if versions:
            found[model.name] = versions[-1][1]
    return found


def git_commit(repo: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MADE_")}
    env.update(extra)
    return env


class Recorder:
    """Collects the flat, ordered map of items, the time each step took, and notes for `meta`."""

    def __init__(self) -> None:
        self.items: dict[str, object] = {}
        self.timings: dict[str, float] = {}
        self.notes: dict[str, object] = {}

    def put(self, key: str, value) -> None:
        assert key not in self.items, key
        self.items[key] = value


# -------------------------------------------------------------------------------------------------- CLI


def run_made(made: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(made), *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=clean_env())
    if done.returncode != 0:
        log(f"exit {done.returncode}: {' '.join(command)}\n{done.stderr[-2000:]}")
    return done


def record_cli(
    rec: Recorder, repo: Path, name: str, model: Path, data: Path, rows: np.ndarray, n_masks: int, work: Path
) -> None:
    made = repo / ".venv" / "bin" / "made"
    base = f"{name}/cli"

    mask_options = [("default", [])] + ([("1", ["--masks", "1"])] if n_masks > 1 else [])
    for label, extra in mask_options:
        start = time.perf_counter()
        done = run_made(
            made, "eval", "--model", str(model), "--data", str(data), "--device", "cpu", *extra, cwd=repo
        )
        rec.timings[f"{base}/eval[masks={label}]"] = time.perf_counter() - start
        key = f"{base}/eval[masks={label}]"
        if done.returncode != 0:
            rec.put(f"{key}/exit", done.returncode)
            continue
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        for field in sorted(answer):
            rec.put(f"{key}/{field}", answer[field])

    arrays = {}
    for sampler, n in (("fast", SAMPLE_N), ("reference", REFERENCE_N)):
        out = work / f"{name}-{sampler}.npy"
        start = time.perf_counter()
        done = run_made(
            made,
            "sample",
            "--model",
            str(model),
            "-n",
            str(n),
            "--seed",
            str(SAMPLE_SEED),
            "--sampler",
            sampler,
            "--device",
            "cpu",
            "--out",
            str(out),
            cwd=repo,
        )
        rec.timings[f"{base}/sample[{sampler}]"] = time.perf_counter() - start
        key = f"{base}/sample[{sampler},n={n},seed={SAMPLE_SEED}]"
        if done.returncode != 0:
            rec.put(f"{key}/exit", done.returncode)
            continue
        array = np.load(out)
        arrays[sampler] = array
        rec.put(f"{key}/sha256", sha256(out.read_bytes()))
        rec.put(f"{key}/dtype", str(array.dtype))
        rec.put(f"{key}/shape", list(array.shape))
    if len(arrays) == 2 and SAMPLE_N == REFERENCE_N:
        rec.put(f"{base}/sample[fast==reference]", bool(np.array_equal(arrays["fast"], arrays["reference"])))

    first = work / f"{name}-first{SCORE_ROWS}.npy"
    np.save(first, rows[:SCORE_ROWS])
    out = work / f"{name}-score.npy"
    start = time.perf_counter()
    done = run_made(
        made,
        "score",
        "--model",
        str(model),
        "--data",
        str(first),
        "--device",
        "cpu",
        "--out",
        str(out),
        cwd=repo,
    )
    rec.timings[f"{base}/score"] = time.perf_counter() - start
    key = f"{base}/score[first {SCORE_ROWS} rows]"
    if done.returncode != 0:
        rec.put(f"{key}/exit", done.returncode)
    else:
        scores = np.load(out)
        rec.put(f"{key}/dtype", str(scores.dtype))
        rec.put(f"{key}/shape", list(scores.shape))
        rec.put(f"{key}/values", [float(v) for v in scores])


# ------------------------------------------------------------------------------------------------- HTTP


def request(
    base: str,
    method: str,
    path: str,
    body=None,
    content_type: str = "application/json",
    accept: str | None = None,
) -> dict:
    """One request to the server at `base`: its status, the recorded headers and the decoded body."""
    data = None
    headers = {}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    if accept:
        headers["Accept"] = accept
    req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as response:
            status, got, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, got, payload = error.code, error.headers, error.read()
    return {
        "status": status,
        "headers": {h: got.get(h) for h in HEADERS if got.get(h) is not None},
        "body": decode_body(got.get("Content-Type", ""), payload),
    }


def drop_timing(value):
    if isinstance(value, dict):
        return {k: drop_timing(v) for k, v in value.items() if k not in DROPPED_FIELDS}
    if isinstance(value, list):
        return [drop_timing(v) for v in value]
    return value


def decode_body(content_type: str, payload: bytes):
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json":
        return {"json": drop_timing(json.loads(payload))}
    if media == "application/x-npy":
        array = np.load(io.BytesIO(payload), allow_pickle=False)
        body = {"sha256": sha256(payload), "dtype": str(array.dtype), "shape": list(array.shape)}
        if array.dtype.names:  # structured (anomaly): each field's values
            body["fields"] = {f: array[f].tolist() for f in array.dtype.names}
        elif array.dtype.kind == "f":  # floats are compared with tolerance, not by hash
            body["values"] = array.tolist()
        if "values" in body or "fields" in body:
            body.pop("sha256")
        return body
    return {"sha256": sha256(payload), "bytes": len(payload), "media_type": media}


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def model_requests(name: str, rows: np.ndarray, n_masks: int) -> list[tuple[str, str, str, dict]]:
    """(label, method, path, options) of the fixed requests for one model."""
    D = rows.shape[1]
    x = rows[:HTTP_ROWS].astype(int).tolist()
    half = D // 2
    top = rows[0, :half].astype(int).tolist()
    v1 = f"/v1/models/{name}"
    sample = {"n": 4, "seed": HTTP_SEED}
    observed_pairs = {"indices": list(range(half)), "values": top}
    observed_row = top + [None] * (D - half)
    requests = [
        ("log-prob[default]", "POST", f"{v1}/log-prob", {"body": {"inputs": x}}),
        ("log-prob[masks=1]", "POST", f"{v1}/log-prob", {"body": {"inputs": x, "masks": 1}}),
        (
            "log-prob[masks=1,per_dimension]",
            "POST",
            f"{v1}/log-prob",
            {"body": {"inputs": x, "masks": 1, "per_dimension": True}},
        ),
        (
            "log-prob[missing bottom half]",
            "POST",
            f"{v1}/log-prob",
            {"body": {"inputs": [r[:half] + [None] * (D - half) for r in x[:2]]}},
        ),
        ("log-prob[missing all]", "POST", f"{v1}/log-prob", {"body": {"inputs": [[None] * D]}}),
        (
            "log-prob[npy in, npy out]",
            "POST",
            f"{v1}/log-prob",
            {
                "body": npy_bytes(rows[:HTTP_ROWS]),
                "content_type": "application/x-npy",
                "accept": "application/x-npy",
            },
        ),
        ("anomaly[default fpr]", "POST", f"{v1}/anomaly", {"body": {"inputs": x}}),
        ("anomaly[fpr=0.05]", "POST", f"{v1}/anomaly", {"body": {"inputs": x, "fpr": 0.05}}),
        (
            "anomaly[fpr=0.05,npy out]",
            "POST",
            f"{v1}/anomaly",
            {"body": {"inputs": x, "fpr": 0.05}, "accept": "application/x-npy"},
        ),
        ("sample[n=4,seed=7]", "POST", f"{v1}/sample", {"body": sample}),
        ("sample[n=4,seed=7,npy]", "POST", f"{v1}/sample", {"body": sample, "accept": "application/x-npy"}),
        ("sample[n=4,seed=7,png]", "POST", f"{v1}/sample", {"body": sample, "accept": "image/png"}),
        ("sample[n=4,seed=7,masks=1]", "POST", f"{v1}/sample", {"body": {**sample, "masks": 1}}),
        (
            "sample[observed top half as indices/values]",
            "POST",
            f"{v1}/sample",
            {"body": {**sample, "observed": observed_pairs}},
        ),
        (
            "sample[observed top half as row with nulls]",
            "POST",
            f"{v1}/sample",
            {"body": {**sample, "observed": observed_row}},
        ),
        (
            "sample[observed top half,png]",
            "POST",
            f"{v1}/sample",
            {"body": {**sample, "observed": observed_pairs}, "accept": "image/png"},
        ),
        (
            "v2 infer[default]",
            "POST",
            f"/v2/models/{name}/infer",
            {
                "body": {
                    "id": "fp-1",
                    "inputs": [{"name": "input", "shape": [HTTP_ROWS, D], "datatype": "UINT8", "data": x}],
                }
            },
        ),
        (
            "v2 infer[masks=1]",
            "POST",
            f"/v2/models/{name}/infer",
            {
                "body": {
                    "id": "fp-2",
                    "inputs": [{"name": "input", "shape": [HTTP_ROWS, D], "datatype": "UINT8", "data": x}],
                    "parameters": {"masks": 1},
                    "outputs": [{"name": "log_prob"}],
                }
            },
        ),
        ("GET /v1/models/{name}", "GET", v1, {}),
        ("GET /v2/models/{name}", "GET", f"/v2/models/{name}", {}),
        ("GET /v2/models/{name}/ready", "GET", f"/v2/models/{name}/ready", {}),
        ("error[wrong row width]", "POST", f"{v1}/log-prob", {"body": {"inputs": [[0, 1]]}}),
        (
            "error[masks beyond stored]",
            "POST",
            f"{v1}/log-prob",
            {"body": {"inputs": x, "masks": n_masks + 1}},
        ),
        (
            "error[sample masks beyond stored]",
            "POST",
            f"{v1}/sample",
            {"body": {**sample, "masks": n_masks + 1}},
        ),
        ("error[value outside support]", "POST", f"{v1}/log-prob", {"body": {"inputs": [[2] * D]}}),
        (
            "error[anomaly with missing value]",
            "POST",
            f"{v1}/anomaly",
            {"body": {"inputs": [x[0][:-1] + [None]]}},
        ),
        (
            "error[v2 wrong shape]",
            "POST",
            f"/v2/models/{name}/infer",
            {"body": {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}},
        ),
    ]
    return requests


GLOBAL_REQUESTS = [
    ("GET /v1/models", "GET", "/v1/models", {}),
    ("GET /v2", "GET", "/v2", {}),
    ("GET /readyz", "GET", "/readyz", {}),
    ("error[unknown model log-prob]", "POST", "/v1/models/nope/log-prob", {"body": {"inputs": [[0, 1]]}}),
    ("error[unknown model info]", "GET", "/v1/models/nope", {}),
    ("error[unknown model v2]", "GET", "/v2/models/nope", {}),
    ("error[unknown route]", "GET", "/nothing", {}),
]


def record_answer(rec: Recorder, key: str, answer: dict) -> None:
    rec.put(f"{key}/status", answer["status"])
    for header in HEADERS:
        if header in answer["headers"]:
            rec.put(f"{key}/header/{header}", answer["headers"][header])
    rec.put(f"{key}/body", answer["body"])


def record_http(
    rec: Recorder, repo: Path, models: dict[str, tuple[Path, np.ndarray, int]], work: Path
) -> None:
    start = time.perf_counter()
    server = Server(
        str(repo / ".venv" / "bin" / "made"),
        repo / "models",
        free_port(),
        [],
        work / "serve.log",
        env=clean_env(MADE_DEVICE="cpu"),
    )
    status = None
    try:
        server.start(timeout_s=READY_TIMEOUT_S)
        rec.timings["http/startup"] = time.perf_counter() - start
        for label, method, path, options in GLOBAL_REQUESTS:
            record_answer(rec, f"http/{label}", request(server.base, method, path, **options))
        for name, (_, rows, n_masks) in models.items():
            start = time.perf_counter()
            for label, method, path, options in model_requests(name, rows, n_masks):
                t0 = time.perf_counter()
                answer = request(server.base, method, path, **options)
                rec.timings[f"{name}/http/{label}"] = time.perf_counter() - t0
                if answer["status"] >= 500:
                    log(f"{name} {label}: HTTP {answer['status']} {answer['body']}")
                record_answer(rec, f"{name}/http/{label}", answer)
            rec.timings[f"{name}/http"] = time.perf_counter() - start
    finally:
        status = server.stop()
    rec.notes["server_exit_status"] = status


# ------------------------------------------------------------------------------------------------ record


def record(repo: Path, data_dir: Path, out: Path, skip_cli: bool = False, skip_http: bool = False) -> None:
    started = time.perf_counter()
    rec = Recorder()
    models = {}
    for name, directory in model_dirs(repo).items():
        if name not in DATA_FILES:
            log(f"skipping {name}: no validation data known for it (add it to DATA_FILES)")
            continue
        config = json.loads((directory / "config.json").read_text())
        models[name] = (directory, validation_rows(data_dir / DATA_FILES[name]), int(config["n_masks"]))
    with tempfile.TemporaryDirectory(prefix="made-answers-") as tmp:
        work = Path(tmp)
        if not skip_cli:
            for name, (directory, rows, n_masks) in models.items():
                log(f"CLI {name}")
                start = time.perf_counter()
                record_cli(rec, repo, name, directory, data_dir / DATA_FILES[name], rows, n_masks, work)
                rec.timings[f"{name}/cli"] = time.perf_counter() - start
        if not skip_http:
            log("HTTP")
            try:
                record_http(rec, repo, models, work)
            finally:
                server_log = work / "serve.log"
                if server_log.exists():
                    tail = server_log.read_text(errors="replace").splitlines()
                    problems = [line for line in tail if "Traceback" in line or " error" in line.lower()]
                    if problems:
                        log("server log lines mentioning errors:\n" + "\n".join(problems[-20:]))
    meta = {
        "tool": "answers.py",
        "repo": str(repo),
        **git_commit(repo),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "data_dir": str(data_dir),
        "models": {name: str(directory.relative_to(repo)) for name, (directory, _, _) in models.items()},
        "settings": {
            "sample_n": SAMPLE_N,
            "reference_n": REFERENCE_N,
            "sample_seed": SAMPLE_SEED,
            "score_rows": SCORE_ROWS,
            "http_rows": HTTP_ROWS,
            "http_seed": HTTP_SEED,
        },
        **rec.notes,
        "seconds": round(time.perf_counter() - started, 1),
        "timings_s": {k: round(v, 2) for k, v in rec.timings.items()},
    }
    out.write_text(json.dumps({"meta": meta, "items": rec.items}, indent=1) + "\n")
    log(f"wrote {out}: {len(rec.items)} items in {meta['seconds']} s")


# ----------------------------------------------------------------------------------------------- compare


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _header_value(value):
    """Headers are strings: compare integers exactly, floats with tolerance, anything else as text."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
                return number if math.isfinite(number) else value
            except ValueError:
                return value
    return value


def diff(old, new, path: str = "") -> tuple[list[str], float, int]:
    """(differences, max abs difference of the numbers compared, how many numbers were compared)."""
    if _is_number(old) and _is_number(new):
        if isinstance(old, int) and isinstance(new, int):
            delta = float(abs(old - new))
            return ([f"{path or 'value'}: {old} != {new}"] if old != new else []), delta, 1
        if math.isnan(old) or math.isnan(new):
            same = math.isnan(old) and math.isnan(new)
            return ([] if same else [f"{path or 'value'}: {old} vs {new}"]), 0.0 if same else math.inf, 1
        delta = abs(old - new)
        return (
            ([f"{path or 'value'}: {old!r} vs {new!r} (|diff| {delta:.3g})"] if delta > TOLERANCE else []),
            delta,
            1,
        )
    if isinstance(old, dict) and isinstance(new, dict):
        problems, worst, count = [], 0.0, 0
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                problems.append(f"{where}: only in {'new' if key not in old else 'old'}")
                continue
            p, w, c = diff(old[key], new[key], where)
            problems += p
            worst, count = max(worst, w), count + c
        return problems, worst, count
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path or 'value'}: length {len(old)} != {len(new)}"], 0.0, 0
        problems, worst, count = [], 0.0, 0
        for i, (a, b) in enumerate(zip(old, new, strict=True)):  # lengths checked above
            p, w, c = diff(a, b, f"{path}[{i}]")
            problems += p
            worst, count = max(worst, w), count + c
        return problems, worst, count
    if type(old) is not type(new) or old != new:
        return [f"{path or 'value'}: {_short(old, 120, False)} != {_short(new, 120, False)}"], 0.0, 0
    return [], 0.0, 0


def _short(value, limit: int = 48, short_hashes: bool = True) -> str:
    if value is None:
        return "—"
    if (
        short_hashes
        and isinstance(value, str)
        and len(value) == 64
        and all(c in "0123456789abcdef" for c in value)
    ):
        return value[:16] + "…"  # a sha256
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"))
    if len(text) > limit:
        digest = sha256(text.encode())[:8]
        text = f"{text[: limit - 16]}… ({len(text)} ch, #{digest})"
    return text.replace("|", "\\|")


def compare(old_path: Path, new_path: Path) -> int:
    old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
    print("# Fingerprint comparison\n")
    for label, doc, path in (("old", old, old_path), ("new", new, new_path)):
        m = doc["meta"]
        print(
            f"- {label}: `{path}`: commit {m.get('commit')}{' (dirty)' if m.get('dirty') else ''}, "
            f"{m.get('date')}, repo {m.get('repo')}, {m.get('seconds')} s"
        )
    print(f"- tolerance: {TOLERANCE:g} absolute for numbers; everything else exact\n")
    print("| item | old | new | max abs diff | result |")
    print("|---|---|---|---|---|")
    keys = list(old["items"]) + [k for k in new["items"] if k not in old["items"]]
    n_diff = 0
    notes = []
    for key in keys:
        a, b = old["items"].get(key, None), new["items"].get(key, None)
        if key not in old["items"] or key not in new["items"]:
            problems, worst, count = [f"only in {'new' if key not in old['items'] else 'old'}"], 0.0, 0
        elif "/header/" in key:
            problems, worst, count = diff(_header_value(a), _header_value(b))
        else:
            problems, worst, count = diff(a, b)
        result = "DIFF" if problems else "OK"
        n_diff += bool(problems)
        if problems:
            notes.append((key, problems))
        print(
            f"| {key.replace('|', chr(92) + '|')} | {_short(a)} | {_short(b)} | "
            f"{f'{worst:.3g} ({count} numbers)' if count else ''} | {result} |"
        )
    print(f"\n{len(keys)} items, {len(keys) - n_diff} OK, {n_diff} DIFF")
    for key, problems in notes:
        print(
            f"\n**{key}**: "
            + "; ".join(problems[:10])
            + (f"; … {len(problems) - 10} more" if len(problems) > 10 else "")
        )
    return 1 if n_diff else 0


# -------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    global REFERENCE_N
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repo", type=Path, help="checkout whose .venv/bin/made and models/ are fingerprinted"
    )
    parser.add_argument("--data-dir", type=Path, help="the shared data (default: <repo>/../shared/data)")
    parser.add_argument("--out", type=Path, help="fingerprint JSON to write")
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("OLD.json", "NEW.json"),
        help="print a markdown table comparing two fingerprints; exit 1 on any difference",
    )
    parser.add_argument(
        "--reference-n",
        type=int,
        default=REFERENCE_N,
        help=f"samples drawn by the reference sampler (default {REFERENCE_N}; it is the slowest step: "
        "about 6 min for binarized-mnist-any-order on 2 shared cores; a different n is a "
        "different item, so compare only fingerprints made with the same n)",
    )
    parser.add_argument(
        "--skip-cli", action="store_true", help="record only the HTTP answers (for quick checks)"
    )
    parser.add_argument(
        "--skip-http", action="store_true", help="record only the CLI answers (for quick checks)"
    )
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.repo or not args.out:
        parser.error("--repo and --out are required (or use --compare OLD NEW)")
    repo = args.repo.resolve()
    if not (repo / ".venv" / "bin" / "made").exists():
        parser.error(f"{repo}/.venv/bin/made not found: run `make install` in the checkout")
    REFERENCE_N = args.reference_n
    data_dir = (args.data_dir or repo / ".." / "shared" / "data").resolve()
    record(repo, data_dir, args.out, skip_cli=args.skip_cli, skip_http=args.skip_http)
    return 0


if __name__ == "__main__":
    sys.exit(main())
