"""GET /v1/models, GET /v1/models/{name}, POST /v1/models/{name}/reload."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..deps import AdminDep, EngineDep, require_admin
from ..errors import ModelNotFound, Unauthorized, responses
from ..registry import ModelEntry, ModelRegistry
from ..schemas import MasksInfo, ModelInfo, ModelList, ReloadResponse

router = APIRouter(prefix="/v1/models", tags=["models"])


# Where a model was trained from (command lines, data files) is the operator's business: shown only to a
# request with the admin token. Everything else in the training record (epochs, scores, seed) is public.
PRIVATE_TRAINING_KEYS = ("command", "data_file", "valid_file")  # also in the calibration summary


def describe(registry: ModelRegistry, entry: ModelEntry, admin: bool) -> ModelInfo:
    last_error = entry.last_error
    if last_error and not admin:  # load errors name files: relative to the repository, not the disk
        for root in {str(registry.root.resolve()), str(registry.root)}:
            last_error = last_error.replace(root, "<repository>")
    info = ModelInfo(
        name=entry.name,
        status=entry.state,
        versions_available=registry.versions(entry.name),
        loading_version=entry.loading_version,
        last_error=last_error,
    )
    served = entry.current
    if served is None:
        return info
    config = served.config
    hidden = {"history"} if admin else {"history", *PRIVATE_TRAINING_KEYS}
    training = config.training.model_dump(exclude=hidden) if config.training else None
    return info.model_copy(
        update=dict(
            version=served.version,
            likelihood=config.likelihood.model_dump(exclude_none=True),
            n_dims=config.n_dims,
            input_shape=config.input_shape,
            hidden_sizes=config.hidden_sizes,
            masks=MasksInfo(
                stored=config.n_masks,
                default=config.eval_masks,
                resampling=config.mask_resampling,
                fresh_masks=config.fresh_masks,
                mixture=config.mixture,
            ),
            device=str(served.device),
            loaded_at=served.loaded_at,
            load_seconds=round(served.load_seconds, 4),
            training=training,
            calibration=_calibration(config, admin),
        )
    )


def _calibration(config, admin: bool) -> dict | None:
    if config.calibration is None:
        return None
    summary = config.calibration.summary()
    if admin:
        return summary
    public = {k: v for k, v in summary.items() if k not in PRIVATE_TRAINING_KEYS}
    if public.get("context") is not None:  # the context model's training file, too
        public["context"] = {k: v for k, v in public["context"].items() if k not in PRIVATE_TRAINING_KEYS}
    return public


@router.get("", response_model=ModelList)
async def list_models(engine: EngineDep, admin: AdminDep) -> ModelList:
    """Every model in the repository that the server serves, with its status (ready, loading, failed).
    The training record's command line and data files only with the admin token."""
    registry = engine.registry
    return ModelList(models=[describe(registry, e, admin) for e in registry.entries.values()])


@router.get("/{name}", response_model=ModelInfo, responses=responses(ModelNotFound))
async def get_model(name: str, engine: EngineDep, admin: AdminDep) -> ModelInfo:
    """One model: version, likelihood, dimensions, input shape, masks, device, status, training record
    (its command line and data files only with the admin token) and calibration summary."""
    return describe(engine.registry, engine.registry.entry(name), admin)


@router.post(
    "/{name}/reload",
    status_code=202,
    response_model=ReloadResponse,
    dependencies=[Depends(require_admin)],
    responses=responses(Unauthorized, ModelNotFound),
)
async def reload_model(name: str, engine: EngineDep) -> ReloadResponse:
    """Load the model's newest (or pinned) version in the background and swap it in atomically; the current
    version serves until then, and keeps serving if the load fails. Needs the admin token if one is set."""
    version = engine.registry.reload_in_background(name)
    return ReloadResponse(model=name, status="loading", version=version)
