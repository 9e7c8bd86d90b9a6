"""All service settings in one object: environment variables `MADE_<NAME>`, or `made serve` flags.

Every limit the service enforces is here, explicit and documented (docs/api.md lists them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MADE_", extra="forbid")

    # where and what to serve
    model_repository: Path = Field(
        Path("models"), description="model repository: <name>/<version>/ directories"
    )
    models: list[str] | None = Field(
        None, description="serve only these model names (default: every model found)"
    )
    model_versions: dict[str, int] = Field(
        default_factory=dict,
        description='pin a model to a version, e.g. {"binarized-mnist": 1}; default: highest',
    )
    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0 in the container)")
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    workers: Annotated[int, Field(ge=1)] = Field(
        1, description="server processes; >1 runs prometheus-client multiprocess mode so /metrics aggregates"
    )
    worker_healthcheck_s: Annotated[int, Field(ge=1)] = Field(
        30,
        description="with workers > 1: a worker that does not answer the supervisor's health check in this "
        "time is restarted (a new one imports torch first, which takes seconds on a busy machine)",
    )
    compute_threads: Annotated[int, Field(ge=0)] = Field(
        0, description="torch intra-op threads for CPU compute (0: torch's default)"
    )
    cuda_graphs: bool = Field(
        True,
        description="on CUDA, run the fast sampler's walk as cached CUDA graphs (one launch, not hundreds)",
    )

    # dynamic batching
    max_batch_rows: Annotated[int, Field(ge=1)] = Field(
        4096, description="rows merged into one model call; bigger requests are split, never refused for it"
    )
    max_batch_delay_ms: Annotated[float, Field(ge=0)] = Field(
        2.0, description="how long the first request of a batch waits for others to join"
    )
    max_queue_requests: Annotated[int, Field(ge=1)] = Field(
        256, description="requests waiting per model and operation; beyond it: 503 with Retry-After"
    )
    compute_handoff_ms: Annotated[float, Field(ge=0, le=10)] = Field(
        0.5,
        description="after handing a batch to the compute thread while other requests are in flight, the "
        "event loop pauses this long, so that the batch starts at once rather than when the loop next "
        "releases Python's GIL (0: never pause)",
    )
    request_timeout_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="default deadline; a client lowers it with the X-Request-Timeout header (seconds)"
    )

    # request limits
    max_request_rows: Annotated[int, Field(ge=1)] = Field(100_000, description="rows in one request")
    max_sample_n: Annotated[int, Field(ge=1)] = Field(1024, description="samples in one request")
    max_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        128 * 1024 * 1024, description="request body size (413)"
    )
    min_drift_rows: Annotated[int, Field(ge=2)] = Field(
        30, description="rows a drift check needs at least (a two-sample test on fewer says little)"
    )
    max_header_bytes: Annotated[int, Field(ge=1024)] = Field(
        64 * 1024, description="request line and headers of one request (431, connection closed)"
    )
    read_timeout_s: Annotated[float, Field(gt=0)] = Field(
        15.0,
        description="a request's head must arrive within this time of its first byte (or of the connection "
        "opening), and its body may pause no longer than this between reads (408, connection closed)",
    )
    keep_alive_s: Annotated[float, Field(gt=0)] = Field(
        5.0, description="an idle keep-alive connection is closed after this time"
    )
    max_missing_patterns: Annotated[int, Field(ge=1)] = Field(
        64, description="distinct patterns of missing values in one request (each costs a pass per mask)"
    )

    # operations
    admin_token: SecretStr | None = Field(None, description="bearer token required by admin routes (reload)")
    reload_poll_s: Annotated[float, Field(ge=0)] = Field(
        5.0, description="how often to look for new model versions in the repository (0: never)"
    )
    shutdown_grace_s: Annotated[float, Field(ge=0)] = Field(
        25.0, description="on SIGTERM, how long in-flight and queued requests may take before exit"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = Field(False, description="one log line per request (metrics already count them)")

    @model_validator(mode="after")
    def _check(self):
        if not self.models and self.models is not None:
            self.models = None
        return self
