"""Deployment files: ray_cluster.yaml passes Ray's own validator; docker-compose, the KubeRay
manifests and the Dockerfile carry the fields their kind needs, listen on 127.0.0.1 where they
publish, and hold no secret. Nothing here starts a container or reaches a network."""

import copy
import re

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO

INFRA = REPO / "infra"
README = (REPO / "README.md").read_text()
IMAGE = "gentrain:latest"  # what README's `docker build` tags and the KubeRay pods run
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", re.IGNORECASE)
SUBSTITUTION = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")  # ${VAR} or ${VAR:-default}


def _yaml(path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def cluster():
    return _yaml(REPO / "ray_cluster.yaml")


@pytest.fixture(scope="module")
def compose():
    return _yaml(INFRA / "docker-compose.yml")


@pytest.fixture(scope="module")
def all_manifests():
    docs = [
        doc
        for path in sorted((INFRA / "kuberay").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture(scope="module")
def manifests(all_manifests):
    """The Ray ones."""
    return {kind: doc for kind, doc in all_manifests.items() if kind.startswith("Ray")}


@pytest.fixture(scope="module")
def dockerfile():
    """(INSTRUCTION, arguments) per line, comments and blank lines left out."""
    lines = (INFRA / "Dockerfile").read_text().splitlines()
    return [
        (line.split()[0].upper(), line.split(maxsplit=1)[1])
        for line in map(str.strip, lines)
        if line and not line.startswith("#")
    ]


# ray_cluster.yaml


def test_ray_cluster_passes_rays_validator(cluster):
    # As `ray up` does before it talks to AWS: merge the provider's defaults, then validate.
    config = prepare_config(copy.deepcopy(cluster))
    validate_config(config)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    assert config["cluster_name"] == "gentrain"


def test_rays_validator_rejects_a_misspelt_key(cluster):
    config = prepare_config({**copy.deepcopy(cluster), "max_worker": 4})
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(config)


def test_ray_cluster_has_a_head_and_bounded_cpu_and_gpu_workers(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] == "ray.head.default" and "ray.head.default" in types
    cpu, gpu = types["cpu_worker"], types["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and "GPU" not in cpu["resources"]
    for worker in (cpu, gpu):
        assert 0 <= worker["min_workers"] <= worker["max_workers"]
        assert worker["resources"]["CPU"] >= 1
        assert {"InstanceType", "ImageId"} <= worker["node_config"].keys()
    assert cpu["max_workers"] + gpu["max_workers"] <= cluster["max_workers"]
    assert cluster["docker"]["image"] and cluster["docker"]["container_name"]


def test_ray_cluster_installs_gentrain_from_the_mounted_checkout(cluster):
    mounts = cluster["file_mounts"]
    for local in mounts.values():
        assert local.startswith("~") or (REPO / local).exists(), local
    assert mounts["/home/ray/gentrain/platform"] == "./platform"
    assert mounts["/home/ray/gentrain/pyproject.toml"] == "./pyproject.toml"
    assert any("pip install" in c and "/home/ray/gentrain " in c for c in cluster["setup_commands"])


def test_ray_cluster_keeps_token_auth_on_and_the_dashboard_on_loopback(cluster):
    head, worker = cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]
    head_start = next(c for c in head if "ray start" in c)
    worker_start = next(c for c in worker if "ray start" in c)
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert "/home/ray/.ray/auth_token" in cluster["file_mounts"]
    assert "disabled" not in (REPO / "ray_cluster.yaml").read_text()


# infra/docker-compose.yml


def test_compose_runs_mlflow_on_postgres_and_minio(compose):
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= services.keys()
    mlflow = services["mlflow"]
    assert mlflow["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert mlflow["depends_on"]["minio"] == {"condition": "service_healthy"}
    buckets = [name for name, s in services.items() if "mc" in s["image"].split("/")[-1]]
    assert buckets and "mlflow-artifacts" in " ".join(services[buckets[0]]["command"])
    command = " ".join(mlflow["command"])
    assert "--backend-store-uri=postgresql://" in command and "@postgres:5432/" in command
    assert "--artifacts-destination=s3://mlflow-artifacts" in command
    assert "--host=0.0.0.0" in command
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for name in ("postgres", "minio", "mlflow"):
        assert services[name]["healthcheck"]["test"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "postgres-data" in compose["volumes"]


def test_compose_mlflow_signs_users_in_with_no_password_in_the_repo(compose):
    mlflow = compose["services"]["mlflow"]
    assert mlflow["build"] == {"context": ".", "dockerfile": "mlflow.Dockerfile"}
    dockerfile = (INFRA / "mlflow.Dockerfile").read_text()
    assert "COPY mlflow_server.py" in dockerfile and '"mlflow[auth]' in dockerfile
    entrypoint = next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT"))
    assert "mlflow_server.py" in entrypoint and "/auth" in entrypoint
    assert "mlflow-auth:/auth" in mlflow["volumes"] and "mlflow-auth" in compose["volumes"]
    # the admin's password: the user's, else generated at the first start (no default here)
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == "${MLFLOW_AUTH_ADMIN_PASSWORD:-}"
    assert "mlflow" not in mlflow["command"] and "server" not in mlflow["command"]


def test_compose_publishes_ports_on_loopback_only(compose):
    services = compose["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published
    for port in published:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), port
    assert "127.0.0.1:5000:5000" in services["mlflow"]["ports"]
    assert "127.0.0.1:9000:9000" in services["minio"]["ports"]


def test_compose_takes_every_secret_from_the_environment(compose):
    for service in compose["services"].values():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key):
                assert SUBSTITUTION.fullmatch(value), f"{key}: {value}"
    text = (INFRA / "docker-compose.yml").read_text()
    for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", text):
        assert SUBSTITUTION.fullmatch(password), password
    # One local-dev default per variable, and README tells it.
    defaults = {}
    for name, default in SUBSTITUTION.findall(text):
        defaults.setdefault(name, set()).add(default)
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= defaults.keys()
    for name, values in defaults.items():
        assert len(values) == 1, f"{name} has defaults {values}"
        assert name in README and next(iter(values)) in README


# infra/kuberay/


def _check_cluster_spec(spec) -> dict:
    """The fields a RayCluster spec needs; returns its worker groups by name."""
    assert spec["rayVersion"] and spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    assert isinstance(head["rayStartParams"], dict)
    groups = {}
    for group in spec["workerGroupSpecs"]:
        for field in ("groupName", "replicas", "minReplicas", "maxReplicas", "template"):
            assert field in group, field
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["image"]
        groups[group["groupName"]] = group
    return groups


def _containers(manifests):
    for doc in manifests.values():
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            yield from group["template"]["spec"]["containers"]


def test_kuberay_manifests_are_a_raycluster_a_rayjob_and_an_mlflow_server(all_manifests):
    assert all_manifests.keys() == {"RayCluster", "RayJob", "Deployment", "Service"}
    for kind in ("RayCluster", "RayJob"):
        assert all_manifests[kind]["apiVersion"] == "ray.io/v1"
    assert all_manifests["Deployment"]["apiVersion"] == "apps/v1"
    assert all_manifests["Service"]["apiVersion"] == "v1"
    for doc in all_manifests.values():
        assert doc["metadata"]["name"]


def test_raycluster_autoscales_cpu_and_gpu_groups(manifests):
    spec = manifests["RayCluster"]["spec"]
    groups = _check_cluster_spec(spec)
    assert spec["enableInTreeAutoscaling"] is True
    assert {"cpu", "gpu"} <= groups.keys()
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) >= 1
    cpu = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in cpu["limits"]


def test_rayjob_runs_a_shipped_gentrain_spec_and_cleans_up(manifests):
    spec = manifests["RayJob"]["spec"]
    entrypoint = spec["entrypoint"].split()
    assert entrypoint[:2] == ["gentrain", "run"]
    # The image holds the checkout's jobs/ at /home/ray/gentrain (infra/Dockerfile).
    assert entrypoint[2].startswith("/home/ray/gentrain/jobs/")
    assert (REPO / entrypoint[2].removeprefix("/home/ray/gentrain/")).is_file()
    assert spec["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(spec["rayClusterSpec"])


def test_kuberay_pods_share_one_image_and_read_aws_and_mlflow_keys_from_secrets(manifests):
    containers = list(_containers(manifests))
    assert {c["image"] for c in containers} == {IMAGE}
    for container in containers:
        assert {"secretRef": {"name": "gentrain-aws"}} in container["envFrom"]
        assert {"secretRef": {"name": "gentrain-mlflow"}} in container["envFrom"]
        for variable in container.get("env", []):
            assert not SECRET_NAME.search(variable["name"]), variable["name"]


def test_kuberay_mlflow_server_signs_users_in_where_the_ray_pods_look(
    all_manifests, manifests, compose
):
    deployment, service = all_manifests["Deployment"], all_manifests["Service"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == compose["services"]["mlflow"]["image"]  # mlflow.Dockerfile's
    assert "command" not in container, "the image's entrypoint: mlflow_server.py"
    variables = {variable["name"]: variable for variable in container["env"]}
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI"):
        assert "secretKeyRef" in variables[name]["valueFrom"], name
    for name, variable in variables.items():
        if SECRET_NAME.search(name):
            assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], name
    assert {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= variables.keys()
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels and service["spec"]["type"] == "ClusterIP"
    # the Ray pods' MLFLOW_TRACKING_URI is this Service, a name MLflow lets in (--allowed-hosts)
    address = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    port = service["spec"]["ports"][0]["port"]
    for doc in manifests.values():
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        env = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
        uri = next(v["value"] for v in env if v["name"] == "MLFLOW_TRACKING_URI")
        assert uri == f"http://{address}:{port}"
    allowed = next(a for a in container["args"] if a.startswith("--allowed-hosts="))
    assert f"{address}:{port}" in allowed.split("=", 1)[1].split(",")


# infra/Dockerfile


def test_dockerfile_installs_gentrain_on_a_cuda_image(dockerfile):
    bases = [args for instruction, args in dockerfile if instruction == "FROM"]
    assert len(bases) == 1 and re.search(r"-cu\d+$|cuda", bases[0]), bases
    copied = [
        source
        for instruction, args in dockerfile
        if instruction == "COPY"
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert {"pyproject.toml", "platform", "jobs"} <= set(copied)
    installs = [args for instruction, args in dockerfile if instruction == "RUN" and "pip" in args]
    assert any(re.search(r"pip install .* \.( |$)", args) for args in installs), installs
    assert f"docker build -f infra/Dockerfile -t {IMAGE} ." in README


def test_dockerfile_holds_no_secret(dockerfile):
    for instruction, args in dockerfile:
        if instruction in ("ENV", "ARG"):
            assert not SECRET_NAME.search(args), args
    assert "AWS_" not in (INFRA / "Dockerfile").read_text()


# All of them


def test_every_cluster_runs_the_ray_installed_here(cluster, manifests, dockerfile):
    # Ray turns away a client of another version: clusters must run the Ray gentrain uses here.
    version = ray.__version__
    base = next(args for instruction, args in dockerfile if instruction == "FROM")
    assert base.startswith(f"rayproject/ray:{version}-")
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{version}-")
    commands = [args for instruction, args in dockerfile if instruction == "RUN"]
    pins = re.findall(r"ray\[[\w,]+\]==([\w.]+)", " ".join(commands + cluster["setup_commands"]))
    assert len(pins) == 2 and set(pins) == {version}
    for doc in manifests.values():
        assert doc["spec"].get("rayClusterSpec", doc["spec"])["rayVersion"] == version
