"""docker-compose.yml, its GPU override and the nginx gateway, statically: the compose specification's
schema (check-jsonschema's vendored copy, offline), the files they mount, the stop grace period against the
service's drain, and the gateway's limits against the service's."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import (
    COMPOSE,
    COMPOSE_GPU,
    NGINX_CONF,
    PROMETHEUS_CONFIG,
    ROOT,
    default,
    drain_bound_s,
    duration_s,
    nginx_directives,
    nginx_size_bytes,
    parse_dockerfile,
    run,
    setting_of_env,
    tool,
)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def merge(base, override):
    """Compose's merge of an override file, for the parts used here: mappings merge, the rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def gpu_compose(compose) -> dict:
    return merge(compose, load(COMPOSE_GPU))


def check_compose_schema(*paths: Path):
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, paths))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_files_follow_the_compose_specification():
    check_compose_schema(COMPOSE, COMPOSE_GPU)


def test_merged_gpu_stack_follows_the_compose_specification(gpu_compose, tmp_path):
    merged = tmp_path / "docker-compose.merged.yml"
    merged.write_text(yaml.safe_dump(gpu_compose))
    check_compose_schema(merged)


def test_schema_check_catches_mistakes(compose, tmp_path):
    broken = copy.deepcopy(compose)
    broken["services"]["made"]["stop_grace_perod"] = broken["services"]["made"].pop("stop_grace_period")
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path))
    assert result.returncode != 0 and "stop_grace_perod" in result.stdout


def test_the_stack_has_service_gateway_prometheus_and_grafana(compose):
    assert {"made", "gateway", "prometheus", "grafana"} <= set(compose["services"])
    assert compose["services"]["made"]["build"]["context"] == "."


def test_every_mounted_file_exists():
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in load(path)["services"].items():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
                if source.startswith("."):
                    assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def test_service_environment_names_are_settings(compose, gpu_compose):
    for stack in (compose, gpu_compose):
        for name in stack["services"]["made"].get("environment", {}):
            assert not name.startswith("MADE_") or setting_of_env(name), f"{name} is not a service setting"


def test_stop_grace_period_outlasts_the_drain(compose):
    made = compose["services"]["made"]
    grace = float(made.get("environment", {}).get("MADE_SHUTDOWN_GRACE_S", default("shutdown_grace_s")))
    assert duration_s(made["stop_grace_period"]) > drain_bound_s(grace), (
        "Docker would SIGKILL the service in the middle of its drain"
    )


def test_service_port_matches_the_image(compose):
    dockerfile = parse_dockerfile()
    port = dockerfile.env(dockerfile.stages[-1])["MADE_PORT"]
    assert [str(p) for p in compose["services"]["made"]["expose"]] == [port]


def test_gpu_override_reserves_one_nvidia_gpu_and_builds_the_cuda_image(gpu_compose):
    made = gpu_compose["services"]["made"]
    devices = made["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert made["build"]["args"]["FLAVOUR"] == "cuda" and made["build"]["context"] == "."
    assert made["environment"]["MADE_DEVICE"] == "cuda"
    assert made["image"].endswith(":cuda")
    dockerfile = parse_dockerfile()
    assert dockerfile.stage("base-cuda") is not None


def test_cpu_stack_reserves_no_gpu(compose):
    assert "deploy" not in compose["services"]["made"]
    assert compose["services"]["made"]["build"]["args"]["FLAVOUR"] == "cpu"


def test_prometheus_mounts_its_config_and_scrapes_the_service(compose):
    prometheus = compose["services"]["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"] if v.startswith("."))
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    container_path = config_flag.split("=", 1)[1]
    host = next(
        ROOT / h / Path(container_path).relative_to(c)
        for h, c in mounts.items()
        if container_path.startswith(c + "/")
    )
    assert host.resolve() == PROMETHEUS_CONFIG.resolve()
    job = next(
        j for j in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"] if j["job_name"] == "made"
    )
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["made"] and sd["port"] == default("port")
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_mounts_provisioning_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = {c: ROOT / h for h, c in (v.split(":")[:2] for v in grafana["volumes"] if v.startswith("."))}
    provider = yaml.safe_load(
        (mounts["/etc/grafana/provisioning"] / "dashboards" / "made-service.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    assert path in mounts and (mounts[path] / "made-service.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[str(Path(home).parent)] / Path(home).name).is_file()


# ---- gateway ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nginx() -> dict[str, list[list[str]]]:
    directives: dict[str, list[list[str]]] = {}
    for name, arguments in nginx_directives(NGINX_CONF.read_text()):
        directives.setdefault(name, []).append(arguments)
    return directives


def test_gateway_mounts_the_config(compose):
    gateway = compose["services"]["gateway"]
    assert "./docker/nginx/default.conf:/etc/nginx/conf.d/default.conf:ro" in gateway["volumes"]
    assert gateway["depends_on"]["made"]["condition"] == "service_healthy"


def test_gateway_body_limit_is_the_service_limit(nginx):
    (limit,) = nginx["client_max_body_size"]
    assert nginx_size_bytes(limit[0]) == default("max_body_bytes")
    # the gateway's own 413 answer uses the service's error shape and limit
    (answer,) = [a for a in nginx["return"] if a[0] == "413"]
    body = json.loads(answer[1].strip("'"))
    assert body["error"]["code"] == "payload_too_large" and body["error"]["limit"] == default(
        "max_body_bytes"
    )


def test_gateway_timeouts_leave_the_deadline_to_the_service(nginx):
    """The service answers 504 deadline_exceeded itself at request_timeout_s, and a batch computing at the
    deadline still finishes: the gateway must wait a little longer than the deadline, not much longer."""
    deadline = default("request_timeout_s")
    for name in ("proxy_read_timeout", "proxy_send_timeout", "send_timeout"):
        (value,) = nginx[name]
        assert deadline < duration_s(value[0]) <= deadline + 10, name
    (body_timeout,) = nginx["client_body_timeout"]
    assert duration_s(body_timeout[0]) <= deadline


def test_gateway_closes_idle_upstream_connections_before_the_service_does(nginx):
    """The service closes a keep-alive connection idle for keep_alive_s. A gateway that keeps it longer
    may send the next request down a connection the service is closing, and answer 502: the gateway's
    upstream keep-alive must end first. Its header timeout is the service's head read timeout or less."""
    (keepalive,) = nginx["keepalive_timeout"]
    assert duration_s(keepalive[0]) < default("keep_alive_s")
    (header_timeout,) = nginx["client_header_timeout"]
    assert duration_s(header_timeout[0]) <= default("read_timeout_s")


def test_gateway_proxies_to_the_service(nginx, compose):
    assert ["made:8000"] in nginx["server"]
    assert ["http://made"] in nginx["proxy_pass"]
    assert ["8080"] in nginx["listen"] and "8080:8080" in compose["services"]["gateway"]["ports"]


@pytest.mark.skipif(
    shutil.which("nginx") is None, reason="nginx is not installed (apt-get install nginx-light)"
)
def test_nginx_accepts_the_gateway_config(tmp_path):
    """`nginx -t` where nginx exists. The upstream host `made` only resolves inside the compose network, so
    it is pointed at loopback for the syntax check."""
    config = NGINX_CONF.read_text().replace("server made:8000;", "server 127.0.0.1:8000;")
    (tmp_path / "default.conf").write_text(config)
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  include {tmp_path}/default.conf;\n}}\n"
    )
    result = run("nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr")
    assert result.returncode == 0, result.stderr
