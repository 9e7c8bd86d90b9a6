"""The service's CUDA-only paths on a real device: out-of-memory halving with a real allocator failure, and
the server on the GPU with its device-memory gauge. Skipped cleanly where there is no GPU."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.api.batcher import Batcher
from service.made import build
from tests.api.helpers import running, save_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_a_real_cuda_out_of_memory_is_retried_in_halves_and_answers_every_row():
    torch.manual_seed(0)
    model = build(64, hidden_sizes=(4096,)).cuda().eval()
    x = torch.bernoulli(torch.full((65536, 64), 0.5))
    with torch.inference_mode():  # the answer, 4096 rows at a time
        expected = torch.cat([model.log_prob(part.cuda()).cpu() for part in x.split(4096)])
    attempts: list[int] = []

    def compute(payloads):
        rows = [len(p[0]) for p in payloads]
        batch = torch.cat([p[0] for p in payloads]).cuda()
        attempts.append(len(batch))
        with torch.inference_mode():  # the hidden layer alone is 1 GiB for all 65536 rows
            return [(y,) for y in model.log_prob(batch).cpu().split(rows)]

    async def submit():
        batcher = Batcher(
            "m",
            "log_prob",
            compute,
            ThreadPoolExecutor(1),
            max_batch_rows=65536,
            max_delay_s=0.0,
            max_queue_requests=10,
        )
        batcher.start()
        try:
            return await batcher.submit((x,), asyncio.get_running_loop().time() + 60)
        finally:
            await batcher.close()

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    device = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(device).total_memory
    # The allocator may hold what it holds now plus 384 MiB: the whole batch cannot fit, a quarter can.
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + 384 * 2**20) / total, device)
    try:
        (result,) = asyncio.run(submit())
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    assert attempts[0] == 65536 and len(attempts) > 2, attempts  # it failed whole, then went down in halves
    assert sum(a for a in attempts if a < 65536) >= 65536
    assert torch.allclose(result, expected, atol=1e-4)


def test_the_server_on_cuda_answers_like_the_cpu_and_reports_device_memory(tmp_path):
    repository = tmp_path / "models"
    save_tiny(repository / "tiny" / "1")
    x = [[1, 0, 1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]]
    answers = {}
    for device in ("cpu", "cuda"):
        with running(repository, env={"MADE_DEVICE": device}) as server:
            details = server.client.get("/v1/models/tiny").json()
            answer = server.client.post("/v1/models/tiny/log-prob", json={"x": x})
            assert answer.status_code == 200, answer.text
            answers[device] = torch.tensor(answer.json()["log_prob"])
            samples = server.client.post("/v1/models/tiny/sample", json={"n": 16, "seed": 3})
            assert samples.status_code == 200, samples.text
            if device == "cuda":
                assert details["device"] == "cuda", details
                assert server.metric("made_device_memory_bytes", kind="allocated") > 0
                assert server.metric("made_device_memory_bytes", kind="reserved") > 0
                assert server.metric("made_model_info", model="tiny", device="cuda") == 1
    assert torch.allclose(answers["cpu"], answers["cuda"], atol=1e-4)
