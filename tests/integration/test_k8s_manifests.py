"""deploy/k8s: every manifest validates offline against pinned Kubernetes schemas, and the
manifests agree with the code they deploy (issue 23 item 4).

Schemas: `kubernetes-validate` (pinned in the dev extra) ships the OpenAPI schemas of each
Kubernetes release; `strict=True` uses the variants that refuse unknown fields. The manifests are
checked as `kubectl apply -k deploy/k8s` renders them (the kustomization's namespace and image
applied here by hand: no kubectl or kustomize binary in CI), for the oldest Kubernetes they target
and for the newest the pinned package knows. No cluster, no network, no Docker.

Cross-references: probe paths are GET routes of the real FastAPI app that answer without
credentials; container ports are the settings' ports; every environment variable named is a
`TANDEM_CLOUD_*` setting, and the ConfigMap parses with `CloudSettings`; Service selectors and
target ports find the Deployment's pods; the HPA and the PDB point at the Deployment; the
termination grace covers the server's drain. The same topology as local processes (two replicas
sharing Redis) runs in tests/integration/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from cloud_service.http_app import create_app
from cloud_service.service import RecommendationService
from cloud_service.settings import CloudSettings
from tandemrec.paths import REPO_ROOT

pytestmark = pytest.mark.integration

K8S = REPO_ROOT / "deploy" / "k8s"
# The oldest Kubernetes the manifests target (PDB unhealthyPodEvictionPolicy is on by default
# from 1.27; autoscaling/v2 and policy/v1 long before) and the newest schemas the pinned
# kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Applied by hand, not by `kubectl apply -k`: the example Secret (so an apply never writes
# placeholders over the real keys) and the bundle loader pod (only while loading a bundle).
STANDALONE = ("secret.example.yaml", "bundle-loader.yaml")
PREFIX = "TANDEM_CLOUD_"
SETTINGS = {PREFIX + name.upper() for name in CloudSettings.model_fields}
SECRET_SETTINGS = {PREFIX + name.upper() for name, f in CloudSettings.model_fields.items()
                   if "SecretStr" in str(f.annotation)}
CLUSTER_SCOPED = {"Namespace"}
PLACEHOLDER = "REPLACE-ME"


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization() -> dict[str, Any]:
    return _load(K8S / "kustomization.yaml")[0]


def _render() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` sends: the resources, namespaced, images set."""
    kust = _kustomization()
    images = {i["name"]: i for i in kust.get("images", [])}
    out = []
    for name in kust["resources"]:
        for doc in _load(K8S / name):
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kust["namespace"]
            for pod in _pod_specs(doc):
                for c in pod["containers"]:
                    if c["image"] in images:
                        img = images[c["image"]]
                        c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}"
            out.append(doc)
    return out


def _pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if doc["kind"] == "Pod":
        yield doc["spec"]
    elif doc["kind"] in ("Deployment", "StatefulSet"):
        yield doc["spec"]["template"]["spec"]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return _render()


@pytest.fixture(scope="module")
def deployment(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(rendered, "Deployment", "tandem-cloud")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def env(rendered: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The replica's environment: the ConfigMap(s) it reads, then its own env entries, with the
    example Secret's placeholders for the keys."""
    secret = _one(_load(K8S / "secret.example.yaml"), "Secret")
    out: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, "credentials come by key from the Secret"
        out.update(_one(rendered, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            out[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], f"{ref['key']} not in the Secret"
            out[var["name"]] = secret["stringData"][ref["key"]]
    return out


@pytest.fixture(scope="module")
def settings(env: dict[str, str]) -> CloudSettings:
    """The replica's settings as `tandem serve` reads them from that environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.upper().startswith(PREFIX)]:
            mp.delenv(name)
        for name, value in env.items():
            mp.setenv(name, value)
        return CloudSettings()


@pytest.fixture(scope="module")
def fast_schemas() -> Iterator[None]:
    """kubernetes_validate re-reads a 2 MB definitions file per resource: read each once."""
    with pytest.MonkeyPatch.context() as mp:
        utils = kubernetes_validate.utils
        if hasattr(utils, "schema_contents"):
            mp.setattr(utils, "schema_contents", functools.lru_cache(utils.schema_contents))
        yield


# ---- schemas -------------------------------------------------------------------------------

def _manifests() -> list[tuple[str, dict[str, Any]]]:
    """(where, object) for every object `kubectl apply -k` sends, and the standalone files'."""
    docs = [(f"kustomize:{d['kind']}/{d['metadata']['name']}", d) for d in _render()]
    for name in STANDALONE:
        docs += [(name, d) for d in _load(K8S / name)]
    return docs


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly_against_pinned_kubernetes(version: str,
                                                                     fast_schemas: None) -> None:
    docs = _manifests()
    assert len(docs) >= 10
    errors = []
    for where, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    assert not errors, f"Kubernetes {version}:\n" + "\n".join(errors)

def test_strict_validation_refuses_an_unknown_field_and_a_wrong_type(fast_schemas: None) -> None:
    """The validator really is strict: a misspelt field or a quoted port is an error."""
    doc = _one(_render(), "Deployment")
    probe = doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGet"]["pth"] = probe["httpGet"].pop("path")
    with pytest.raises(kubernetes_validate.ValidationError, match="pth"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    doc = _one(_render(), "Service", "tandem-cloud-http")
    doc["spec"]["ports"][0]["port"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError, match="integer"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_standalone_ones() -> None:
    kust = _kustomization()
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    assert set(kust) <= {"apiVersion", "kind", "namespace", "resources", "images"}, \
        "the test renders only these kustomize fields; teach _render() any new one"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kust["resources"]) == sorted(files - set(STANDALONE))
    assert set(STANDALONE) <= files
    for image in kust["images"]:
        assert image["newTag"] != "latest", "pin the image"


def test_the_kinds_the_cloud_needs_are_there(rendered: list[dict[str, Any]]) -> None:
    kinds = {(d["apiVersion"], d["kind"]) for d in rendered}
    assert {("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"),
            ("autoscaling/v2", "HorizontalPodAutoscaler"), ("policy/v1", "PodDisruptionBudget"),
            ("v1", "PersistentVolumeClaim")} <= kinds
    names = [(d["kind"], d["metadata"]["name"]) for d in rendered]
    assert len(names) == len(set(names)), "a kind/name pair appears twice"


# ---- the app behind the probes and ports ---------------------------------------------------

def test_probes_are_get_routes_that_answer_without_credentials(
        container: dict[str, Any], settings: CloudSettings) -> None:
    """The kubelet sends no key: /healthz answers 200 and /readyz 503 on an unstarted replica
    (no model yet), both through the same guarded app `tandem serve` runs."""
    probes = {kind: container[kind]["httpGet"] for kind in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in probes.values():
        assert probe["port"] in ports and ports[probe["port"]] == settings.http_port
        assert probe.get("scheme", "HTTP") == "HTTP"

    service = RecommendationService(settings.model_copy(update={"redis_url": ""}))
    app = create_app(service)
    routes = {(m, r.path) for r in service_routes(app) for m in r.methods}

    async def get(path: str) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            return (await client.get(path)).status_code

    expected = {"/healthz": 200, "/readyz": 503}
    for kind, probe in probes.items():
        assert ("GET", probe["path"]) in routes, f"{kind}: no GET route {probe['path']}"
        assert asyncio.run(get(probe["path"])) == expected[probe["path"]], kind


def service_routes(guard: Any) -> list[Any]:
    """The FastAPI routes behind RequestGuard (`create_app` wraps the app in it)."""
    return [r for r in guard.app.routes if hasattr(r, "methods")]


def test_container_ports_are_the_settings_ports(container: dict[str, Any],
                                                settings: CloudSettings) -> None:
    defaults = CloudSettings.model_fields
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port}
    assert ports == {"http": defaults["http_port"].default, "grpc": defaults["grpc_port"].default}
    assert settings.metrics_port is None, "a metrics port needs a containerPort and a policy"
    assert settings.host == "0.0.0.0", "127.0.0.1 would refuse the probes and the Services"


def test_every_environment_variable_is_a_cloud_setting(rendered: list[dict[str, Any]],
                                                       env: dict[str, str]) -> None:
    named = set(env)
    for doc in rendered:
        if doc["kind"] == "ConfigMap":
            named |= set(doc["data"])
    unknown = sorted(named - SETTINGS)
    assert not unknown, f"not TANDEM_CLOUD_* settings of cloud_service/settings.py: {unknown}"
    for doc in rendered:  # credentials never in a ConfigMap
        if doc["kind"] == "ConfigMap":
            assert not set(doc["data"]) & SECRET_SETTINGS
    assert set(env) >= SECRET_SETTINGS, "each key is read from the Secret"


def test_the_config_parses_as_the_replica_reads_it(settings: CloudSettings,
                                                   container: dict[str, Any],
                                                   deployment: dict[str, Any]) -> None:
    """The ConfigMap's values are valid settings, and the bundle lies on the read-only volume."""
    assert settings.redis_url and settings.auth_required
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    root = Path(settings.bundle_root)
    assert Path(settings.bundle).is_relative_to(root)
    mount = mounts[str(root)]
    assert mount.get("readOnly") is True
    claim = volumes[mount["name"]]["persistentVolumeClaim"]
    assert claim.get("readOnly") is True


def test_the_secret_example_holds_only_marked_placeholders() -> None:
    secret = _one(_load(K8S / "secret.example.yaml"), "Secret")
    assert "data" not in secret, "stringData only: readable placeholders"
    for key, value in secret["stringData"].items():
        assert value.startswith(PLACEHOLDER), f"{key} is not a marked placeholder"
    assert "PLACEHOLDER" in (K8S / "secret.example.yaml").read_text().splitlines()[0]


def test_redis_url_names_the_redis_service(rendered: list[dict[str, Any]],
                                           settings: CloudSettings) -> None:
    url = httpx.URL(settings.redis_url)
    redis = _one(rendered, "Service", url.host)
    assert url.port in [p["port"] for p in redis["spec"]["ports"]]
    pods = [d for d in rendered if d["kind"] == "StatefulSet"]
    assert any(_selects(redis["spec"]["selector"], p) for p in pods)


# ---- the objects point at each other -------------------------------------------------------

def _labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    return selector.items() <= _labels(workload).items()


def test_deployment_selector_matches_its_pods(deployment: dict[str, Any]) -> None:
    assert _selects(deployment["spec"]["selector"]["matchLabels"], deployment)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def test_services_select_the_cloud_pods_and_name_its_ports(rendered: list[dict[str, Any]],
                                                           deployment: dict[str, Any],
                                                           container: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    cloud = [d for d in rendered if d["kind"] == "Service" and d["metadata"]["name"]
             .startswith("tandem-cloud")]
    assert {s["metadata"]["name"] for s in cloud} == {"tandem-cloud-grpc", "tandem-cloud-http"}
    for svc in cloud:
        assert _selects(svc["spec"]["selector"], deployment)
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{svc['metadata']['name']}: {port}"
            assert port["port"] == ports[port["targetPort"]]
    grpc = _one(rendered, "Service", "tandem-cloud-grpc")
    assert [p["targetPort"] for p in grpc["spec"]["ports"]] == ["grpc"]
    # No other pod carries the cloud's labels (Redis has its own component).
    others = [d for d in rendered if d["kind"] == "StatefulSet"]
    for svc in cloud:
        assert not any(_selects(svc["spec"]["selector"], o) for o in others)


def test_hpa_and_pdb_target_the_deployment(rendered: list[dict[str, Any]],
                                           deployment: dict[str, Any]) -> None:
    hpa = _one(rendered, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu, "a Resource metric needs the container's request"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for metric in cpu:
        assert metric["resource"]["name"] in container["resources"]["requests"]

    pdb = _one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    # One replica may go while the other serves: at the HPA's minimum a drain is never blocked.
    if "maxUnavailable" in pdb["spec"]:
        assert 1 <= pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    else:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_configmap_secret_and_claim_referenced_exist(rendered: list[dict[str, Any]],
                                                     deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        if "persistentVolumeClaim" in volume:
            claim = _one(rendered, "PersistentVolumeClaim",
                         volume["persistentVolumeClaim"]["claimName"])
            assert "ReadWriteMany" in claim["spec"]["accessModes"], "every replica mounts it"
    loader = _one(_load(K8S / "bundle-loader.yaml"), "Pod")
    assert {v["persistentVolumeClaim"]["claimName"] for v in loader["spec"]["volumes"]} == {
        v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
        if "persistentVolumeClaim" in v}
    namespace = _one(rendered, "Namespace")
    assert namespace["metadata"]["name"] == _kustomization()["namespace"]


def test_termination_grace_covers_the_servers_drain(deployment: dict[str, Any],
                                                    settings: CloudSettings) -> None:
    """SIGTERM: not ready but serving DRAIN_DELAY_S, then three stops each bounded by
    SHUTDOWN_GRACE_S (in-flight requests, HTTP connections, gRPC); the kubelet's SIGKILL must
    come after all of them (cloud_service/server.py)."""
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = settings.drain_delay_s + 3 * settings.shutdown_grace_s
    assert drain + 5 <= grace <= drain + 30, (grace, drain)
    readiness = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    # Endpoints drop a terminating pod at once; the delay covers propagation to every node.
    assert settings.drain_delay_s >= readiness["periodSeconds"]


def test_pods_run_unprivileged(rendered: list[dict[str, Any]]) -> None:
    """The namespace enforces the restricted Pod Security Standard: every pod must meet it."""
    pods = [p for d in rendered for p in _pod_specs(d)]
    pods += [p for d in _load(K8S / "bundle-loader.yaml") for p in _pod_specs(d)]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "memory" in c["resources"]["limits"]

