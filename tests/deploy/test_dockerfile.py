"""The Dockerfile and .dockerignore, statically: hadolint, the stages and flavours, the final image's user,
port, health check, environment and models, and the build context."""

from __future__ import annotations

import re

import pytest

from tests.deploy.support import (
    DOCKERFILE,
    ROOT,
    _pattern_regex,
    default,
    dockerignore_rules,
    excluded_from_context,
    parse_dockerfile,
    run,
    setting_of_env,
    tool,
)

FLAVOURS = ("cpu", "cuda")


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile()


@pytest.fixture(scope="module")
def final(dockerfile):
    return dockerfile.stages[-1]


def test_hadolint_passes():
    result = run(tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_is_really_checking(tmp_path):
    """The linter runs (not a silently missing binary): a known-bad Dockerfile fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    result = run(tool("hadolint"), "--no-color", str(bad))
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_multi_stage_with_a_builder_copied_into_the_final_stage(dockerfile, final):
    assert len(dockerfile.stages) >= 2
    copies = [i for i in final.all("COPY") if i.flags().get("from")]
    assert any(i.flags()["from"] == "builder" and "/opt/venv" in i.arguments for i in copies), (
        "the final stage should take the virtualenv from the builder"
    )
    assert dockerfile.stage("builder") is not None
    # the final stage installs nothing itself: no pip, no compiler
    assert not any("pip install" in i.arguments for i in final.all("RUN"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_each_flavour_has_a_base_and_a_matching_torch_index(dockerfile, flavour):
    args = {"FLAVOUR": flavour}
    chain = [s.name for s in dockerfile.chain(dockerfile.stages[-1], args)]
    assert f"base-{flavour}" in chain, chain
    env = dockerfile.env(dockerfile.stages[-1], args)
    base_image = dockerfile.stage(f"base-{flavour}").base
    if flavour == "cpu":
        assert base_image.startswith("python:3.11-slim")
        assert env["TORCH_INDEX_URL_DEFAULT"].endswith("/whl/cpu")
    else:
        assert base_image.startswith("nvidia/cuda:")
        cuda = re.match(r"nvidia/cuda:(\d+)\.(\d+)", base_image).groups()
        assert env["TORCH_INDEX_URL_DEFAULT"].endswith(f"/whl/cu{cuda[0]}{cuda[1]}"), (
            "the CUDA wheels must match the CUDA base image"
        )
        assert any("python3.11" in i.arguments for i in dockerfile.stage(f"base-{flavour}").all("RUN"))


def test_cpu_is_the_default_flavour_and_torch_is_pinned_like_the_makefile(dockerfile):
    assert dockerfile.global_args["FLAVOUR"] == "cpu"
    builder_args = dict(
        i.arguments.split("=", 1) for i in dockerfile.stage("builder").all("ARG") if "=" in i.arguments
    )
    makefile = (ROOT / "Makefile").read_text()
    assert f"TORCH_SPEC ?= {builder_args['TORCH_SPEC']}" in makefile
    assert "TORCH_INDEX_URL" in builder_args


def test_final_stage_runs_as_a_non_root_user(final):
    user = final.last("USER")
    assert user is not None, "no USER in the final stage"
    uid = user.arguments.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric, non-root uid (Kubernetes runAsNonRoot can check it)"
    assert final.instructions.index(user) > max(final.instructions.index(i) for i in final.all("COPY"))


def test_final_stage_exposes_the_service_port_and_checks_healthz(dockerfile, final):
    assert (
        final.last("EXPOSE").arguments.split()[0]
        == dockerfile.env(final)["MADE_PORT"]
        == str(default("port"))
    )
    check = final.last("HEALTHCHECK")
    assert check is not None
    argv = check.exec_form()
    assert argv and argv[0] == "python", "exec form with the image's python (the slim image has no curl)"
    assert "/healthz" in argv[-1] and "127.0.0.1" in argv[-1]


def test_final_environment_is_the_container_configuration(dockerfile, final):
    env = dockerfile.env(final)
    assert env["MADE_HOST"] == "0.0.0.0"
    assert env["MADE_MODEL_REPOSITORY"] == "/models"
    assert env["MADE_LOG_FORMAT"] == "json"
    assert env["PATH"].startswith("/opt/venv/bin:")
    for name in env:
        if name.startswith("MADE_"):
            assert setting_of_env(name), f"{name} is not a service setting"


def test_bundled_models_are_baked_in_at_the_model_repository(dockerfile, final):
    copy = [i for i in final.all("COPY") if not i.flags().get("from") and "models" in i.arguments]
    assert (
        copy and copy[0].arguments.split()[-1].rstrip("/") == dockerfile.env(final)["MADE_MODEL_REPOSITORY"]
    )
    assert (ROOT / "models").is_dir() and any((ROOT / "models").glob("*/*/config.json"))


def test_stop_signal_is_sigterm_the_drain_signal(final):
    signal = final.last("STOPSIGNAL")
    assert signal is None or signal.arguments in ("SIGTERM", "15")


# ---- build context -----------------------------------------------------------------------------------------
def _copied_sources(dockerfile) -> list[str]:
    sources = []
    for stage in dockerfile.stages:
        for i in stage.all("COPY") + stage.all("ADD"):
            if i.flags().get("from"):
                continue
            words = [w for w in i.arguments.split() if not w.startswith("--")]
            sources += words[:-1]
    return sources


def test_everything_the_dockerfile_copies_is_in_the_context(dockerfile):
    rules = dockerignore_rules()
    sources = _copied_sources(dockerfile)
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        kept = [f for f in files if not excluded_from_context(str(f.relative_to(ROOT)), rules)]
        assert kept, f"{source} is excluded by .dockerignore"
    for needed in (
        "pyproject.toml",
        "README.md",
        "service/__init__.py",
        "service/api/server.py",
        "models/binarized-mnist/1/config.json",
        "models/binarized-mnist/1/weights.safetensors",
    ):
        assert not excluded_from_context(needed, rules), needed


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".git/HEAD",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        "service/__pycache__/cli.cpython-311.pyc",
        "runs/mnist/log.txt",
        "made_service.egg-info/PKG-INFO",
        "data.npz",
        "models/x/1/rows.npy",
        "models/x/.staging-2/config.json",
        "tests/conftest.py",
        "bench/throughput.py",
        "docs/api.md",
    ],
)
def test_dockerignore_keeps_venv_caches_and_data_out(path):
    assert excluded_from_context(path, dockerignore_rules())


def test_dockerignore_matcher_follows_docker_semantics():
    """The matcher the two tests above rely on: last match wins, `!` re-includes, parents count."""
    rules = [(False, _pattern_regex("*")), (True, _pattern_regex("src")), (False, _pattern_regex("**/*.pyc"))]
    assert excluded_from_context("anything", rules)
    assert excluded_from_context("deep/inside/file", rules)
    assert not excluded_from_context("src/a/b.py", rules)
    assert excluded_from_context("src/a/b.pyc", rules)
    assert excluded_from_context("b.pyc", rules)
