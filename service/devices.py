"""Device selection: `auto` takes CUDA when present, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(spec: str = "auto") -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} was asked for, but CUDA is not available on this machine")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here"
            )
        return device
    raise ValueError(f"unknown device {spec!r}; expected auto, cpu, cuda or cuda:N")
