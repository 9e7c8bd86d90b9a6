"""The model repository as the server sees it: `<repository>/<name>/<version>/` checkpoint directories.

Each model name serves one version: the highest complete one, unless the settings pin another. Loading
happens in a loader thread (never on the event loop, never blocking compute); a loaded model is warmed,
then swapped in by assigning one reference, so every batch sees either the old version or the new one.
A load that fails leaves the old version serving and is reported (log, /v1/models, metrics). The watcher
polls the repository and loads new versions as they appear; a version that failed is retried only when
its files change.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import checkpoint
from ..calibration import Calibration
from ..checkpoint import CheckpointConfig, CheckpointError
from ..context_model import ContextModel
from ..made import Density, make_generator
from ..made.fast_sampling import sample_fast
from ..settings import Settings
from . import metrics
from .errors import ModelNotFound, ModelNotReady

log = logging.getLogger("made.registry")


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: int
    path: Path
    model: Density
    config: CheckpointConfig
    device: torch.device
    loaded_at: float
    load_seconds: float
    context_model: ContextModel | None = None  # the calibration's, for the nll_or_context anomaly score

    @property
    def calibration(self) -> Calibration | None:
        return self.config.calibration


@dataclass
class ModelEntry:
    name: str
    current: ServedModel | None = None
    loading_version: int | None = None
    last_error: str | None = None
    failed_signatures: dict[int, tuple] = field(default_factory=dict)
    reload_task: asyncio.Task | None = None

    @property
    def state(self) -> str:
        if self.current is not None:
            return "ready"
        return "loading" if self.loading_version is not None or self.last_error is None else "failed"


def _signature(path: Path) -> tuple:
    """Changes whenever the version's files change: a failed version is retried only then."""
    stats = []
    for name in (checkpoint.CONFIG_FILE, checkpoint.WEIGHTS_FILE):
        try:
            st = (path / name).stat()
            stats.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stats.append(None)
    return tuple(stats)


def settle_heap() -> None:
    """Collect, then move every live object into the garbage collector's permanent generation (gc.freeze):
    the full collections that come every few thousand requests stop walking the loaded models, torch and
    the app, which took ~100 ms each and set the p99 latency (bench: docs/benchmarks.md). Runs on the event
    loop once, after the start-up's loads."""
    gc.collect()
    gc.freeze()


def unsettle_heap() -> None:
    """After a reload: back to the ordinary collector, so the replaced version can be freed wherever it
    sits (batchers of the old version hold it until they retire, and a frozen cycle is never collected).
    The p99 gain returns with the next start."""
    gc.unfreeze()


MAX_NAME_BYTES = 255  # the longest file name Linux filesystems take (ext4, xfs): longer is no directory


def is_model_name(name: str) -> bool:
    """A model is a directory directly inside the repository, so its name is one path component: never
    "..", ".", empty, anything holding a separator (a name from a URL must not leave the repository), or
    longer than a file name can be."""
    return (
        name not in ("", ".", "..")
        and not any(c in name for c in "/\\\x00")
        and len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
    )


class ModelRegistry:
    def __init__(self, settings: Settings, device: torch.device, loader: Executor):
        self.settings = settings
        self.root = Path(settings.model_repository)
        self.device = device
        self.loader = loader
        self.entries: dict[str, ModelEntry] = {}
        self.started = False  # the start-up's loads are done

    # ---- the repository ----------------------------------------------------------------------------
    def versions(self, name: str) -> list[int]:
        """Complete versions of a model (a directory named by an integer, holding a config.json); none for
        a name that is not a directory inside the repository. Every path to a model is built from these."""
        if not is_model_name(name):
            return []
        directory = self.root / name
        try:
            if not directory.is_dir():
                return []
            return sorted(
                int(child.name)
                for child in directory.iterdir()
                if child.is_dir() and child.name.isdigit() and (child / checkpoint.CONFIG_FILE).is_file()
            )
        except OSError as exc:  # unreadable, or vanished while listed: no versions to load from here
            log.warning("cannot list model versions", extra={"model": name, "error": str(exc)})
            return []

    def names(self) -> list[str]:
        if self.settings.models:
            return list(self.settings.models)
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def target_version(self, name: str) -> int | None:
        if not is_model_name(name):
            return None
        pinned = self.settings.model_versions.get(name)
        if pinned is not None:
            return pinned
        versions = self.versions(name)
        return versions[-1] if versions else None

    # ---- lookups -------------------------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The version of `name` serving now: one snapshot, taken once per request. A request for a
        particular version (the Open Inference Protocol's versioned routes) gets it only if it is that one."""
        entry = self.entry(name)
        if entry.current is None:
            detail = f": {entry.last_error}" if entry.last_error else " (still loading)"
            raise ModelNotReady(f"model {name!r} is not ready{detail}", headers={"Retry-After": "5"})
        if version is not None and not self._is(entry.current, version):
            raise ModelNotFound(
                f"version {version!r} of model {name!r} is not served; "
                f"it serves version {entry.current.version}"
            )
        return entry.current

    def serves(self, name: str, version: str | None = None) -> bool:
        """Whether `name` (404 if unknown) has a version serving, and it is `version` if one is named."""
        current = self.entry(name).current
        return current is not None and (version is None or self._is(current, version))

    @staticmethod
    def _is(served: ServedModel, version: str) -> bool:
        return version.isdigit() and int(version) == served.version

    def entry(self, name: str) -> ModelEntry:
        if name not in self.entries:
            raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists the models served")
        return self.entries[name]

    @property
    def ready(self) -> bool:
        return bool(self.entries) and all(e.current is not None for e in self.entries.values())

    # ---- loading -------------------------------------------------------------------------------------
    async def load_all(self) -> None:
        names = self.names()
        if not names:
            log.warning("no models found", extra={"repository": str(self.root)})
        loop = asyncio.get_running_loop()
        for name in names:
            entry = self.entries.setdefault(name, ModelEntry(name))
            metrics.initialise_model(name)
            metrics.set_model_state(name, "loading")
            # Recorded as the entry's load in progress, so neither the watcher nor a reload request
            # starts a second load of the same version while the first is still running.
            entry.reload_task = loop.create_task(self.reload(name))
        await asyncio.gather(*(self.entries[name].reload_task for name in names))
        self.started = True
        settle_heap()

    def reload_in_background(self, name: str) -> int | None:
        """Start loading the target version of `name` (a no-op if one is loading); returns that version."""
        if self.settings.models and name not in self.settings.models:
            raise ModelNotFound(f"model {name!r} is not among the models this server is configured to serve")
        version = self.target_version(name)
        if version is None:
            raise ModelNotFound(f"no versions of {name!r} in the model repository {self.root}")
        if name not in self.entries:
            metrics.initialise_model(name)
        entry = self.entries.setdefault(name, ModelEntry(name))
        if entry.reload_task is None or entry.reload_task.done():
            entry.reload_task = asyncio.get_running_loop().create_task(self.reload(name))
        return version

    async def reload(self, name: str) -> bool:
        entry = self.entries.setdefault(name, ModelEntry(name))
        version = self.target_version(name)
        if version is None:
            entry.last_error = f"no versions of {name!r} in {self.root}"
            metrics.set_model_state(name, entry.state)
            return False
        path = self.root / name / str(version)
        entry.loading_version = version
        if entry.current is None:
            metrics.set_model_state(name, "loading")
        started = time.perf_counter()
        try:
            model, config, context_model = await asyncio.get_running_loop().run_in_executor(
                self.loader, self._load, path
            )
        except (CheckpointError, RuntimeError, ValueError, OSError) as exc:
            entry.loading_version = None
            entry.last_error = f"version {version}: {exc}"
            entry.failed_signatures[version] = _signature(path)
            metrics.MODEL_LOADS.labels(model=name, result="failed").inc()
            metrics.set_model_state(name, entry.state)
            log.error(
                "model failed to load",
                extra={
                    "model": name,
                    "version": version,
                    "error": str(exc),
                    "serving": entry.current.version if entry.current else None,
                },
            )
            return False
        seconds = time.perf_counter() - started
        previous = entry.current
        entry.current = ServedModel(
            name, version, path, model, config, self.device, time.time(), seconds, context_model
        )
        entry.loading_version = None
        entry.last_error = None
        entry.failed_signatures.pop(version, None)
        metrics.MODEL_LOADS.labels(model=name, result="loaded").inc()
        metrics.MODEL_LOAD_DURATION.labels(model=name).set(seconds)
        metrics.set_model_state(name, "ready")
        if previous is not None:
            metrics.MODEL_INFO.labels(
                name, str(previous.version), previous.config.likelihood.name, str(self.device)
            ).set(0)
        metrics.MODEL_INFO.labels(name, str(version), config.likelihood.name, str(self.device)).set(1)
        log.info(
            "model ready",
            extra={
                "model": name,
                "version": version,
                "seconds": round(seconds, 3),
                "replaced": previous.version if previous else None,
            },
        )
        if self.started:  # a reload (the start-up's loads settle once, together)
            unsettle_heap()
        return True

    def _load(self, path: Path) -> tuple[Density, CheckpointConfig, ContextModel | None]:
        """Load and warm one version (runs in the loader thread; the model is not shared yet)."""
        model, config = checkpoint.load(path, device=self.device)
        context = config.calibration.context if config.calibration is not None else None
        context_model = None
        if context is not None:
            context_model = context.model(model.n_dims, config.input_shape, device=self.device)
        with torch.inference_mode():
            warm = (
                model.shift.expand(2, -1).clone()
                if model.likelihood.real_valued
                else torch.zeros(2, model.n_dims, device=self.device)
            )
            # two masks run the ensemble's code path; all of a 512-mask default would only cost start-up time
            model.log_prob(warm, masks=min(config.eval_masks, 2))
            sample_fast(model, 1, masks=1, generator=make_generator(0, self.device))  # also builds its plan
            if context_model is not None:
                context_model.code_length(warm)
        return model, config, context_model

    # ---- watching the repository ------------------------------------------------------------------------
    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_poll_s)
            try:
                self.check_for_new_versions()
            except Exception:  # a flaky filesystem must not stop the watcher
                log.exception("repository scan failed")

    def check_for_new_versions(self) -> None:
        for name in self.names():
            entry = self.entries.get(name)
            version = self.target_version(name)
            if version is None:
                continue
            if entry is not None:
                if entry.reload_task is not None and not entry.reload_task.done():
                    continue
                if entry.current is not None and entry.current.version == version:
                    continue
                if entry.failed_signatures.get(version) == _signature(self.root / name / str(version)):
                    continue  # failed before and unchanged since
            log.info("new model version found", extra={"model": name, "version": version})
            self.reload_in_background(name)
