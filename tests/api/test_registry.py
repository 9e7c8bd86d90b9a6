"""The model registry on a temporary repository: versions, pins, lookups, swaps and failed loads."""

from __future__ import annotations

import asyncio
import gc
import shutil
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.api.errors import ModelNotFound, ModelNotReady
from service.api.registry import ModelRegistry
from service.settings import Settings
from tests.api.helpers import save_tiny


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two versions of a tiny model, built once; each test copies them into its own repository."""
    root = tmp_path_factory.mktemp("built")
    save_tiny(root / "1", steps=20)
    save_tiny(root / "2", seed=1, steps=20, n_dims=10)
    return root


def registry_on(root, **options) -> ModelRegistry:
    return ModelRegistry(
        Settings(model_repository=root, device="cpu", **options), torch.device("cpu"), ThreadPoolExecutor(1)
    )


def test_versions_names_and_the_target_version(tmp_path, built):
    shutil.copytree(built / "1", tmp_path / "tiny" / "1")
    shutil.copytree(built / "2", tmp_path / "tiny" / "2")
    (tmp_path / "tiny" / "3").mkdir()  # no config.json: not a version (yet)
    (tmp_path / "tiny" / "notes").mkdir()
    (tmp_path / "empty").mkdir()
    registry = registry_on(tmp_path)
    assert registry.versions("tiny") == [1, 2] and registry.versions("nothing") == []
    assert registry.names() == ["tiny"]
    assert registry.target_version("tiny") == 2
    assert registry_on(tmp_path, model_versions={"tiny": 1}).target_version("tiny") == 1
    assert registry_on(tmp_path, models=["other"]).names() == ["other"]


def test_a_reload_swaps_in_the_new_version_and_a_failed_one_keeps_the_old(tmp_path, built):
    shutil.copytree(built / "1", tmp_path / "tiny" / "1")
    registry = registry_on(tmp_path)

    async def main():
        with pytest.raises(ModelNotFound):
            registry.get("tiny")  # not loaded, not even known yet
        await registry.load_all()
        first = registry.get("tiny")
        shutil.copytree(built / "2", tmp_path / "tiny" / "2")
        swapped = await registry.reload("tiny")
        second = registry.get("tiny")
        shutil.copytree(built / "1", tmp_path / "tiny" / "3")
        (tmp_path / "tiny" / "3" / "weights.safetensors").write_bytes(b"broken")
        failed = await registry.reload("tiny")
        return first, swapped, second, failed, registry.get("tiny"), registry.entry("tiny")

    first, swapped, second, failed, after, entry = asyncio.run(main())
    assert (first.version, first.model.n_dims) == (1, 8)
    assert swapped and (second.version, second.model.n_dims) == (2, 10)
    assert first.model.n_dims == 8  # a snapshot taken before the swap is unchanged by it
    assert not failed and after is second and entry.state == "ready"
    assert entry.last_error.startswith("version 3:") and 3 in entry.failed_signatures


def test_a_model_that_never_loaded_is_not_ready(tmp_path, built):
    shutil.copytree(built / "1", tmp_path / "tiny" / "1")
    (tmp_path / "tiny" / "1" / "weights.safetensors").write_bytes(b"broken")
    registry = registry_on(tmp_path)
    asyncio.run(registry.load_all())
    with pytest.raises(ModelNotReady) as refused:
        registry.get("tiny")
    assert refused.value.headers["Retry-After"] and registry.entry("tiny").state == "failed"
    assert not registry.ready


def test_the_heap_is_frozen_after_start_up_and_a_replaced_version_is_still_collected(tmp_path, built):
    """settle_heap: after the start-up's loads every live object is in the collector's permanent generation
    (full collections skip it); a reload gives the heap back to the ordinary collector, so the version it
    replaces is freed, even where it sits in a reference cycle."""
    shutil.copytree(built / "1", tmp_path / "tiny" / "1")
    registry = registry_on(tmp_path)

    async def main():
        await registry.load_all()
        frozen = gc.get_freeze_count()
        first = weakref.ref(registry.get("tiny").model)
        registry.get("tiny").model.cycle = [registry.get("tiny").model]  # only a collection can free it
        shutil.copytree(built / "2", tmp_path / "tiny" / "2")
        assert await registry.reload("tiny")
        return frozen, gc.get_freeze_count(), first

    try:
        frozen, after_reload, first = asyncio.run(main())
        gc.collect()
        assert frozen > 0 and after_reload == 0
        assert first() is None  # version 1 is gone
    finally:
        gc.unfreeze()  # the rest of the suite runs with the collector as usual
