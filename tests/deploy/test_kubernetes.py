"""docker/k8s: each variant (cpu, gpu) is a kustomization of its Deployment and HorizontalPodAutoscaler plus
the common Service, PodDisruptionBudget and ServiceMonitor.

Built-in kinds are validated against Kubernetes' own schemas by kubernetes-validate (strict: unknown fields
are errors; the schemas ship inside the package, so this runs offline). The ServiceMonitor is a CRD that
kubernetes-validate cannot know: it is checked with check-jsonschema against
tests/deploy/schemas/servicemonitor.schema.json, a transcription of the CRD's schema for the fields used.
Then the resources are checked against each other and against the service (ports, probes, drain time)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.support import (
    K8S,
    SCHEMAS,
    default,
    drain_bound_s,
    load_yaml_documents,
    parse_dockerfile,
    run,
    setting_of_env,
    tool,
)

KUBERNETES_VERSION = (
    "1.31.0"  # the oldest Kubernetes the manifests are meant for; its schemas ship in the package
)
VARIANTS = ("cpu", "gpu")
CRDS = {"ServiceMonitor": SCHEMAS / "servicemonitor.schema.json"}


def render(directory: Path) -> list[tuple[Path, dict]]:
    """The resources of a kustomization: its `resources` (files, or directories with their own
    kustomization.yaml), recursively. Only `resources` is used by these kustomizations."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, "render() only understands resources"
    found = []
    for entry in kustomization["resources"]:
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml lists {entry}, which does not exist"
        if path.is_dir():
            found += render(path)
        else:
            found += [(path, d) for d in load_yaml_documents(path)]
    return found


def manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request) -> dict[str, dict]:
    resources = render(K8S / request.param)
    kinds = [r["kind"] for _, r in resources]
    assert len(kinds) == len(set(kinds)), kinds
    by_kind = {r["kind"]: r for _, r in resources}
    by_kind["variant"] = request.param
    return by_kind


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env_of(deployment: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_its_schema(path):
    for document in load_yaml_documents(path):
        if document["kind"] in CRDS:
            result = run(tool("check-jsonschema"), "--schemafile", str(CRDS[document["kind"]]), str(path))
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_validation_refuses_a_misspelt_field():
    deployment = yaml.safe_load((K8S / "cpu" / "deployment.yaml").read_text())
    container(deployment)["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_servicemonitor_schema_refuses_a_misspelt_field(tmp_path):
    monitor = yaml.safe_load((K8S / "common" / "servicemonitor.yaml").read_text())
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    path = tmp_path / "servicemonitor.yaml"
    path.write_text(yaml.safe_dump(monitor))
    result = run(tool("check-jsonschema"), "--schemafile", str(CRDS["ServiceMonitor"]), str(path))
    assert result.returncode != 0 and "intervall" in result.stdout


def test_each_variant_has_every_resource(variant):
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
    } <= set(variant)


def test_selectors_match_the_pods(variant):
    deployment = variant["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert variant["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert variant["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = variant["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_servicemonitor_scrapes_the_service_metrics_port(variant):
    monitor, service = variant["ServiceMonitor"], variant["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"


def test_ports_and_probes(variant):
    c = container(variant["Deployment"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    dockerfile = parse_dockerfile()
    assert ports["http"] == default("port") == int(dockerfile.env(dockerfile.stages[-1])["MADE_PORT"])
    assert {p["targetPort"] for p in variant["Service"]["spec"]["ports"]} <= set(ports)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in c:
            assert c[probe]["httpGet"]["port"] in ports


def test_termination_grace_period_outlasts_prestop_and_drain(variant):
    spec = variant["Deployment"]["spec"]["template"]["spec"]
    c = container(variant["Deployment"])
    grace = float(
        env_of(variant["Deployment"])
        .get("MADE_SHUTDOWN_GRACE_S", {})
        .get("value", default("shutdown_grace_s"))
    )
    pre_stop = 0.0
    command = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if command:
        assert command[0] == "sleep"
        pre_stop = float(command[1])
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain_bound_s(grace) + 5, (
        "the kubelet would SIGKILL the pod in the middle of its drain"
    )


def test_environment_names_are_settings(variant):
    for name in env_of(variant["Deployment"]):
        assert not name.startswith("MADE_") or setting_of_env(name), f"{name} is not a service setting"


def test_runs_as_the_images_non_root_user(variant):
    pod = variant["Deployment"]["spec"]["template"]["spec"]
    dockerfile = parse_dockerfile()
    uid = int(dockerfile.stages[-1].last("USER").arguments.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
    c = container(variant["Deployment"])
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, "a read-only root needs a writable /tmp"


def test_resources_and_one_gpu_per_replica(variant):
    c = container(variant["Deployment"])
    resources = c["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    env = env_of(variant["Deployment"])
    assert env["MADE_WORKERS"]["value"] == "1", (
        "one process per replica: its batcher sees all the replica's traffic"
    )
    if variant["variant"] == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
        assert env["MADE_DEVICE"]["value"] == "cuda"
        assert c["image"].endswith(":cuda")
    else:
        assert "nvidia.com/gpu" not in resources["limits"] and "nvidia.com/gpu" not in resources.get(
            "requests", {}
        )
        assert env["MADE_DEVICE"]["value"] == "cpu"
        assert c["image"].endswith(":cpu")
        threads = env["MADE_COMPUTE_THREADS"]["valueFrom"]["resourceFieldRef"]
        assert threads["resource"] == "limits.cpu", "torch threads follow the CPU limit, not the node's cores"


def test_autoscaler_and_disruption_budget_keep_one_replica_serving(variant):
    hpa, pdb = variant["HorizontalPodAutoscaler"], variant["PodDisruptionBudget"]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert pdb["spec"].get("maxUnavailable", 0) < hpa["spec"]["minReplicas"]
    strategy = variant["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0 or variant["variant"] == "gpu"
