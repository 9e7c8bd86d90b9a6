"""Running the service: uvicorn with a drain on SIGTERM, and multiprocess metrics for several workers.

SIGTERM (or Ctrl-C) starts a drain: /readyz turns unready so the load balancer stops sending, requests
that arrive anyway get 503, and in-flight and queued requests complete. When nothing is left, or after
`shutdown_grace_s`, the server shuts down and the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import uvicorn

from ..settings import Settings
from .app import create_app
from .protocol import protocol_factory

log = logging.getLogger("made.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, grace_s: float):
        super().__init__(config)
        self.grace_s = grace_s
        self.drain_started: float | None = None

    def _engine(self):
        app = self.config.loaded_app
        while app is not None and not hasattr(getattr(app, "state", None), "engine"):
            app = getattr(app, "app", None)
        return getattr(app.state, "engine", None) if app is not None else None

    def handle_exit(self, sig, frame) -> None:
        engine = self._engine()
        if self.drain_started is not None or engine is None:
            super().handle_exit(sig, frame)  # a second signal, or nothing to drain: stop now
            return
        self.drain_started = time.monotonic()
        engine.draining = True
        log.info(
            "draining: no new work; finishing in-flight and queued requests",
            extra={"signal": sig, "grace_s": self.grace_s, "in_flight": engine.in_flight},
        )

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            engine = self._engine()
            elapsed = time.monotonic() - self.drain_started
            if engine is None or engine.idle or elapsed > self.grace_s:
                log.info(
                    "drained" if engine is None or engine.idle else "grace period over; stopping",
                    extra={"seconds": round(elapsed, 3)},
                )
                self.should_exit = True
        return await super().on_tick(counter)


def serve(settings: Settings) -> None:
    common = dict(
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)),
        server_header=False,
        # Nothing here reads the client's address or scheme; uvicorn's rewriting of them from X-Forwarded-*
        # would be a layer on every request for no use.
        proxy_headers=False,
        http=protocol_factory(settings.read_timeout_s, settings.max_header_bytes),
        timeout_keep_alive=settings.keep_alive_s,
    )
    if settings.workers > 1:
        # Each worker is its own process with its own models and batchers; metrics are aggregated through
        # prometheus-client's multiprocess directory, which must exist (empty) before the workers start.
        created = None
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            created = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="made-metrics-")
        try:
            uvicorn.run(
                "service.api.app:create_app",
                factory=True,
                workers=settings.workers,
                timeout_worker_healthcheck=settings.worker_healthcheck_s,
                **common,
            )
        finally:
            if created:
                shutil.rmtree(created, ignore_errors=True)
        return
    app = create_app(settings)
    DrainingServer(uvicorn.Config(app, **common), grace_s=settings.shutdown_grace_s).run()
