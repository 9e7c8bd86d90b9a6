"""The engine in-process, without HTTP: operations on a tiny model, and one snapshot per request across a
reload that changes D (made deterministic by holding the compute thread while the model swaps)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from service import checkpoint
from service.api.compute import _float64
from service.api.engine import Engine
from service.api.errors import InvalidInput, NotAcceptable, NotCalibrated
from service.api.schemas import SampleRequest
from service.calibration import calibrate
from service.context_model import ContextModel
from service.settings import Settings
from tests.api.helpers import save_gaussian, save_tiny
from tests.helpers import markov_chain


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-models")
    save_tiny(root / "tiny" / "1", steps=30)
    save_gaussian(root / "gauss" / "1")
    return root


@contextlib.asynccontextmanager
async def loaded_engine(root, **options):
    """An Engine serving `root` (no watcher), every model loaded; stopped on the way out."""
    engine = Engine(Settings(model_repository=root, reload_poll_s=0, device="cpu", **options))
    await engine.registry.load_all()
    try:
        yield engine
    finally:
        await engine.stop()


def run_with_engine(root, operation, **options):
    async def main():
        async with loaded_engine(root, **options) as engine:
            return await operation(engine)

    return asyncio.run(main())


def test_log_prob_and_anomaly_are_the_models_own_numbers(repository):
    model, config = checkpoint.load(repository / "tiny" / "1")
    rows = markov_chain(5, 8, seed=7)

    async def operation(engine):
        deadline = engine.deadline(None)
        return (
            await engine.log_prob("tiny", rows.numpy(), 1, True, deadline),
            await engine.anomaly("tiny", rows.numpy(), 0.25, deadline),
            await engine.anomaly("tiny", rows.numpy(), 0.25, deadline, score="nll"),
        )

    log_prob, anomaly, by_nll = run_with_engine(repository, operation)
    expected = model.log_prob(rows, masks=1).detach().double().numpy()
    assert log_prob.version == 1 and log_prob.masks == 1
    np.testing.assert_allclose(log_prob.log_prob, expected, rtol=1e-5)
    np.testing.assert_allclose(log_prob.per_dimension.sum(axis=1), expected, rtol=1e-5)
    calibration = config.calibration
    nll = -model.log_prob(rows, masks=calibration.masks).detach().double().numpy()
    # the default: -log of the smaller p-value of the NLL and of NLL - L(x), against the reference half
    context = ContextModel(8, config.input_shape).set_counts(
        torch.tensor(calibration.context.ones), torch.tensor(calibration.context.seen)
    )
    ratio = nll - context.code_length(rows).numpy()
    reference = calibration.reference
    union = -np.minimum(reference.nll.log_p_value(nll), reference.nll_minus_context.log_p_value(ratio))
    assert anomaly.score_name == "nll_or_context" and by_nll.score_name == "nll"
    np.testing.assert_allclose(anomaly.score, union, rtol=1e-5)
    np.testing.assert_allclose(anomaly.log_prob, -nll, rtol=1e-5)
    assert anomaly.threshold == calibration.nll_or_context.threshold(0.25) and anomaly.fpr == 0.25
    np.testing.assert_array_equal(anomaly.is_anomaly, anomaly.score > anomaly.threshold)
    np.testing.assert_allclose(by_nll.score, nll, rtol=1e-5)
    assert by_nll.threshold == calibration.nll.threshold(0.25)
    np.testing.assert_allclose(by_nll.p_value, calibration.nll.p_value(by_nll.score))


def test_refusals_are_domain_errors_raised_before_anything_is_queued(repository):
    async def operation(engine):
        deadline = engine.deadline(None)
        refusals = {}
        attempts = {
            "too wide": engine.log_prob("tiny", np.zeros((2, 9)), None, False, deadline),
            "not calibrated": engine.anomaly("gauss", np.zeros((2, 3)), None, deadline),
            "incomplete": engine.anomaly("tiny", np.full((1, 8), np.nan), None, deadline),
            "no image": engine.sample("gauss", SampleRequest(n=2), deadline, image=True),
            "observed too long": engine.sample("tiny", SampleRequest(n=2, observed=[0] * 9), deadline),
        }
        for what, attempt in attempts.items():
            with pytest.raises((InvalidInput, NotCalibrated, NotAcceptable)) as refused:
                await attempt
            refusals[what] = refused.value
        return refusals, engine.batchers.all()

    refusals, batchers = run_with_engine(repository, operation)
    assert refusals["too wide"].status == 422 and "the model expects 8" in refusals["too wide"].message
    assert refusals["not calibrated"].status == 409 and refusals["not calibrated"].code == "not_calibrated"
    assert refusals["incomplete"].details == {"field": "inputs"}
    assert refusals["no image"].status == 406
    assert refusals["observed too long"].details == {"field": "observed"}
    assert batchers == []  # none of them reached a batcher


def test_samples_come_in_the_likelihoods_dtype_with_what_an_image_needs(repository):
    async def operation(engine):
        deadline = engine.deadline(None)
        request = SampleRequest(n=6, seed=3, observed={"indices": [0, 1], "values": [1, 0]})
        return (
            await engine.sample("tiny", request, deadline, image=True),
            await engine.sample("gauss", SampleRequest(n=4, seed=3), deadline),
        )

    binary, real = run_with_engine(repository, operation)
    assert binary.samples.dtype == np.int64 and binary.samples.shape == (6, 8)
    assert (binary.samples[:, :2] == [1, 0]).all()  # the observed values, kept exactly
    image = binary.image
    assert (image.shape, image.low, image.high) == ([2, 4], 0.0, 1.0)
    np.testing.assert_array_equal(image.values, binary.samples)
    assert image.observed.tolist() == [True, True] + [False] * 6
    assert real.samples.dtype.kind == "f" and real.samples.shape == (4, 3) and real.image is None


def test_a_request_is_validated_and_computed_by_one_version_across_a_reload_that_changes_d(tmp_path):
    root = tmp_path / "models"
    save_tiny(root / "tiny" / "1", steps=30)
    old_rows = markov_chain(3, 8, seed=1).numpy()

    async def operation(engine):
        deadline = engine.deadline(None)
        v1 = engine.registry.get("tiny")
        gate = threading.Event()
        engine.compute_executor.submit(gate.wait)  # the compute thread is busy: batches wait
        log_prob = asyncio.ensure_future(engine.log_prob("tiny", old_rows, None, False, deadline))
        anomaly = asyncio.ensure_future(engine.anomaly("tiny", old_rows, None, deadline))
        sample = asyncio.ensure_future(engine.sample("tiny", SampleRequest(n=2, seed=0), deadline))
        await asyncio.sleep(0.05)  # all three validated against version 1 and queued
        save_tiny(root / "tiny" / "2", seed=2, steps=10, n_dims=10)
        assert await engine.registry.reload("tiny")  # version 2, D=10, serves from now on
        gate.set()
        answers = await asyncio.gather(log_prob, anomaly, sample)
        with pytest.raises(InvalidInput) as refused:  # a newcomer with the old width is refused cleanly
            await engine.log_prob("tiny", old_rows, None, False, deadline)
        newcomer = await engine.log_prob("tiny", markov_chain(3, 10).numpy(), None, False, deadline)
        return v1, answers, refused.value, newcomer

    v1, (log_prob, anomaly, sample), refused, newcomer = run_with_engine(root, operation)
    expected = v1.model.log_prob(torch.as_tensor(old_rows), masks=v1.config.eval_masks).detach().numpy()
    assert log_prob.version == 1
    np.testing.assert_allclose(log_prob.log_prob, expected, rtol=1e-5)
    assert anomaly.version == 1 and anomaly.threshold == v1.calibration.nll_or_context.threshold(
        0.01
    )  # version 1's calibration
    assert sample.version == 1 and sample.samples.shape == (2, 8)
    assert "rows have 8 values; the model expects 10" in refused.message
    assert newcomer.version == 2 and newcomer.log_prob.shape == (3,)


def test_a_model_calibrated_for_the_nll_only_scores_by_it_and_refuses_nll_or_context(tmp_path):
    """A checkpoint calibrated before nll_or_context (or without training rows) keeps serving the NLL as its
    default; asking it for nll_or_context is a 409 that says how to add it."""
    save_tiny(tmp_path / "tiny" / "1")
    config = checkpoint.read_config(tmp_path / "tiny" / "1")
    config.calibration = calibrate(config.calibration.nll.quantiles, config.calibration.masks)
    checkpoint.write_config(tmp_path / "tiny" / "1", config)
    rows = markov_chain(40, 8, seed=5).numpy()

    async def operation(engine):
        deadline = engine.deadline(None)
        answers = (
            await engine.anomaly("tiny", rows, None, deadline),
            await engine.drift("tiny", rows, 0.01, deadline),
        )
        with pytest.raises(NotCalibrated) as refused:
            await engine.anomaly("tiny", rows, None, deadline, score="nll_or_context")
        with pytest.raises(NotCalibrated):
            await engine.drift("tiny", rows, 0.01, deadline, score="nll_or_context")
        return answers, refused.value

    (anomaly, drift), refused = run_with_engine(tmp_path, operation)
    assert anomaly.score_name == drift.score_name == "nll" and anomaly.masks == config.calibration.masks
    np.testing.assert_allclose(anomaly.score, -anomaly.log_prob)
    assert refused.status == 409 and "not calibrated for the 'nll_or_context' score" in refused.message
    assert "made calibrate" in refused.message


@pytest.mark.parametrize(
    ("bad_dtype", "named"),
    [(np.int64, "value 2 at row 1, column 5"), (np.float64, "value 2.0 at row 1, column 5")],
    ids=["one-dtype", "mixed-dtypes"],
)
def test_a_request_with_a_bad_value_is_refused_on_its_own_and_its_batch_mates_are_answered(
    repository, bad_dtype, named
):
    """Row values are checked in the batch (validation.batch_rows): the bad request gets its 422, naming
    its own row and column as it sent them, and the requests that shared its batch get the numbers they get
    alone. All int64: the batch is checked at once, then request by request when that fails; with a
    float64 request among them, each is checked on its own."""
    model, _ = checkpoint.load(repository / "tiny" / "1")
    good = markov_chain(3, 8, seed=1).numpy().astype(np.int64)
    bad = good.astype(bad_dtype)
    bad[1, 5] = 2

    async def operation(engine):
        deadline = engine.deadline(None)
        return await asyncio.gather(
            engine.log_prob("tiny", good, 1, False, deadline),
            engine.log_prob("tiny", bad, 1, False, deadline),
            engine.log_prob("tiny", good[:1], 1, False, deadline),
            return_exceptions=True,
        )

    batches = {"model": "tiny", "operation": "log_prob"}
    count_before = REGISTRY.get_sample_value("made_batch_rows_count", batches) or 0
    rows_before = REGISTRY.get_sample_value("made_batch_rows_sum", batches) or 0
    # a long batching delay: the three are queued before it ends, so they share one batch
    first, refused, last = run_with_engine(repository, operation, max_batch_delay_ms=200)
    assert REGISTRY.get_sample_value("made_batch_rows_count", batches) == count_before + 1
    assert REGISTRY.get_sample_value("made_batch_rows_sum", batches) == rows_before + 3 + 3 + 1
    assert isinstance(refused, InvalidInput)
    assert named in str(refused)
    assert refused.details == {"field": "inputs", "row": 1, "column": 5}
    with torch.inference_mode():
        expected = model.log_prob(torch.from_numpy(good).float(), masks=1).double().numpy()
    np.testing.assert_allclose(first.log_prob, expected, rtol=1e-6)
    np.testing.assert_allclose(last.log_prob, expected[:1], rtol=1e-6)


def test_a_request_split_over_batches_is_refused_naming_its_own_row(repository):
    """A request with more rows than max_batch_rows runs in parts, in several batches: its values are
    checked before it is split, so the error names the row as the request numbers it, not as its part."""
    rows = markov_chain(10, 8, seed=2).numpy().astype(np.int64)
    rows[6, 3] = 2  # in the second part of 4 rows, as its row 2

    async def operation(engine):
        return await engine.log_prob("tiny", rows, 1, False, engine.deadline(None))

    with pytest.raises(InvalidInput, match="value 2 at row 6, column 3") as refused:
        run_with_engine(repository, operation, max_batch_rows=4)
    assert refused.value.details == {"field": "inputs", "row": 6, "column": 3}


def test_results_become_float64_arrays_with_the_values_double_gives():
    """compute._float64, the results' way to numpy: float32 and float64 through numpy, other dtypes (no
    numpy equivalent for bfloat16) through torch; always float64, always the values .double() gives."""
    values = torch.tensor([-1125.25, 0.1, 3.0e-8, -7.5])
    for tensor in (values, values.double(), values.bfloat16(), values.half()):
        array = _float64(tensor)
        assert isinstance(array, np.ndarray) and array.dtype == np.float64
        assert np.array_equal(array, tensor.double().numpy())
