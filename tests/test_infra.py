"""What can be validated here of infra/ and prefect.yaml: they parse, with the expected kinds, and
every deployment points at a real flow."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services_bind_to_loopback():
    compose = yaml.safe_load((ROOT / "infra/compose/docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "worker"} <= set(services)
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "postgresql+psycopg2://" in services["mlflow"]["command"]  # SQLAlchemy 2.1 defaults to psycopg v3


def test_no_committed_credentials():
    for path in (ROOT / "infra").rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace").lower()
            assert "password: change-me" not in text and "password=secret" not in text, path


def test_kubernetes_manifests_are_well_formed():
    docs = [d for d in yaml.safe_load_all((ROOT / "infra/k8s/lmforge.yaml").read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "StatefulSet", "Deployment", "Service", "Role", "RoleBinding", "ServiceAccount"} <= kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
    template, service = yaml.safe_load_all((ROOT / "infra/k8s/torchrun-multinode-job.yaml").read_text())
    assert template["job_configuration"]["job_manifest"]["kind"] == "Job"
    assert set(template["variables"]["properties"]) >= {"image", "nnodes", "gpus_per_node"}
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    helm = yaml.safe_load((ROOT / "infra/helm/values.yaml").read_text())
    assert helm["worker"]["config"]["workPool"] == "lmforge-k8s"


def test_prefect_yaml_deployments_point_at_flows():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    from prefect import Flow

    seen = set()
    for dep in spec["deployments"]:
        module_path, attr = dep["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, attr)
        assert isinstance(flow, Flow)
        assert "preset" in flow.parameters.properties and "config" in flow.parameters.properties
        seen.add(flow.name)
        assert dep["work_pool"]["name"] == "lmforge-process"
    assert {"lifecycle", "data", "pretrain", "align"} <= seen
