"""What can be validated here of infra/ and prefect.yaml: they parse, with the expected kinds, and
every deployment points at a real flow."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import signal
import subprocess
import time
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[1]
LMFORGE_IMAGE = "ghcr.io/lmforge/lmforge"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "infra/compose/docker-compose.yml").read_text())


def _k8s() -> dict[tuple[str, str], dict]:
    docs = [d for d in yaml.safe_load_all((ROOT / "infra/k8s/lmforge.yaml").read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _flag(argv: list[str], name: str) -> str:
    """The value after `name` in an argv."""
    return argv[argv.index(name) + 1]


def _volume_target(svc: dict, volume: str) -> str:
    """Where a compose service mounts the named volume `volume` (short syntax)."""
    targets = [v.split(":")[1] for v in svc.get("volumes", []) if v.split(":")[0] == volume]
    assert len(targets) == 1, f"{volume} mounted {len(targets)} times: {svc.get('volumes')}"
    return targets[0]


def test_compose_services_bind_to_loopback():
    services = _compose()["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "worker"} <= set(services)
    assert {"dask-scheduler", "dask-worker", "redis"} <= set(services)
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert (
        "postgresql+asyncpg://"
        in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    # SQLAlchemy 2.1 defaults `postgresql://` to psycopg v3
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")


def test_compose_dask_workers_see_what_the_flow_run_sees():
    services = _compose()["services"]
    worker, dask_worker, scheduler = services["worker"], services["dask-worker"], services["dask-scheduler"]
    # same image: the workers unpickle and run lmforge's stage functions
    assert dask_worker["build"] == scheduler["build"] == worker["build"]
    # the artifacts root at the same path, on the same volume, named by LMFORGE_ARTIFACTS in both
    path = _volume_target(worker, "artifacts")
    assert _volume_target(dask_worker, "artifacts") == path
    for svc in (worker, dask_worker):
        assert svc["environment"]["LMFORGE_ARTIFACTS"] == path
    # shard task runs report to the stack's Prefect server
    api = dask_worker["environment"]["PREFECT_API_URL"]
    assert api == worker["environment"]["PREFECT_API_URL"] and urlparse(api).hostname == "prefect-server"
    assert not [k for k in dask_worker["environment"] if "SECRET" in k or "PASSWORD" in k]
    # the workers dial the scheduler's service and port
    port = _flag(shlex.split(scheduler["command"]), "--port")
    assert shlex.split(dask_worker["command"])[:3] == ["dask", "worker", f"tcp://dask-scheduler:{port}"]
    assert dask_worker["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
    for name in ("dask-scheduler", "dask-worker", "redis"):
        assert services[name]["healthcheck"]["test"], name
    assert "ports" not in services["redis"]  # reachable inside the compose network only


def _secret_refs(deployment: dict) -> dict[str, str | None]:
    """Env variable -> the Secret it is read from (None: a plain value), of a Deployment's container."""
    env = _container(deployment)["env"]
    return {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for e in env}


def test_redis_password_comes_from_the_environment_everywhere():
    """Redis requires a password; it reaches the server and the flow run (which talks to Redis) from the
    environment or a Secret, by the variable dedup reads (`lsh_storage.password_env`), never from the
    config."""
    from conf.dedup import RedisStorage

    var = RedisStorage().password_env
    services = _compose()["services"]
    redis = services["redis"]
    assert redis["environment"]["REDISCLI_AUTH"].startswith(
        f"${{{var}:?"
    )  # compose refuses to start without it
    assert "requirepass" in " ".join(redis["command"]) and "$$REDISCLI_AUTH" in " ".join(redis["command"])
    assert services["worker"]["environment"][var].startswith(f"${{{var}:?")
    assert var not in services["worker"]["environment"]["LMFORGE_DASK_OVERRIDES"]

    k8s = _k8s()
    secret_refs = {
        name: _secret_refs(k8s["Deployment", name]) for name in ("redis", "prefect-process-worker")
    }
    assert (
        secret_refs["redis"]["REDISCLI_AUTH"] == secret_refs["prefect-process-worker"][var] == "lmforge-redis"
    )
    assert "requirepass" in " ".join(_container(k8s["Deployment", "redis"])["command"])
    helm_auth = yaml.safe_load((ROOT / "infra/helm/values.yaml").read_text())["redis"]["auth"]
    assert helm_auth["enabled"] is True and helm_auth["existingSecret"] == "lmforge-redis"


def test_compose_worker_dask_overrides_resolve_to_the_stack():
    from conf.loader import load_config

    services = _compose()["services"]
    overrides = json.loads(services["worker"]["environment"]["LMFORGE_DASK_OVERRIDES"])
    cfg = load_config("tiny", overrides=overrides)
    assert cfg.execution.engine == "dask"
    address = urlparse(cfg.execution.dask_address)
    assert address.scheme == "tcp" and address.hostname in services
    assert str(address.port) == _flag(shlex.split(services[address.hostname]["command"]), "--port")
    storage = cfg.dedup.lsh_storage
    assert storage.type == "redis" and storage.host in services and storage.port == 6379
    assert "--port" not in services[storage.host]["command"]  # redis-server on its default port


def test_image_has_the_dask_engine():
    dockerfile = (ROOT / "infra/compose/Dockerfile").read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"prefect-dask\b", d) for d in deps)  # brings distributed
    # the image installs the project itself (so its core dependencies) from the copied sources
    assert re.search(r"pip install [^\n]*-e '\.(\[[\w,]*\])?'", dockerfile)
    assert {"COPY conf conf", "COPY tasks tasks", "COPY flows flows"} <= set(dockerfile.splitlines())
    # the dask/dask chart in helm values runs these on the lmforge image; distributed no longer ships them
    dask = yaml.safe_load((ROOT / "infra/helm/values.yaml").read_text())["dask"]
    assert dask["worker"]["image"]["repository"] == dask["scheduler"]["image"]["repository"] == LMFORGE_IMAGE
    chmod = next(line for line in dockerfile.splitlines() if "chmod +x" in line)
    for script in (dask["worker"]["image"]["dask_worker"], "dask-scheduler"):
        assert f"> /usr/local/bin/{script}" in dockerfile and f"/usr/local/bin/{script}" in chmod


# a URL with a password in it (`scheme://user:pass@`), or a variable that holds one
_URL_WITH_PASSWORD = re.compile(r"[a-z0-9+.-]+://[^\s/@:]*:[^\s/@]+@", re.IGNORECASE)
_PASSWORD_VAR = re.compile(r"\$\{?\(?\w*(PASSWORD|SECRET|_PW)\w*", re.IGNORECASE)


def _command_text(command: str | list[str] | None) -> str:
    return command if isinstance(command, str) else " ".join(command or [])


def test_database_passwords_never_on_a_command_line():
    """`ps` shows every process's command line to every user of the machine (and the kubelet expands
    `$(VAR)` in a container's args): database URLs reach servers through the environment only."""
    for name, svc in _compose()["services"].items():
        command = _command_text(svc.get("command"))
        assert not _URL_WITH_PASSWORD.search(command), (name, command)
        assert "--backend-store-uri" not in command, name
        if name != "redis":  # redis-server gets its password on stdin, from $REDISCLI_AUTH
            assert not _PASSWORD_VAR.search(command), (name, command)
    for (kind, name), doc in _k8s().items():
        if kind != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            command = _command_text(container.get("command")) + " " + _command_text(container.get("args"))
            assert not _URL_WITH_PASSWORD.search(command) and "--backend-store-uri" not in command, name
            assert "$(DB_PASSWORD)" not in command, name
            env = [e["name"] for e in container.get("env", [])]
            for i, e in enumerate(container.get("env", [])):  # $(VAR) expands only from variables above it
                for used in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
                    assert used in env[:i], (name, e["name"], used)
    mlflow_env = {e["name"]: e.get("value") for e in _container(_k8s()["Deployment", "mlflow"])["env"]}
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://lmforge:$(DB_PASSWORD)@")

    serve = (ROOT / "infra/local/serve.sh").read_text()
    starts = [line for line in serve.splitlines() if re.search(r"(mlflow|prefect)\" server", line)]
    assert len(starts) == 2 and not any("--backend-store-uri" in line or "URI" in line for line in starts)
    assert "export MLFLOW_BACKEND_STORE_URI=" in serve
    makefile = (ROOT / "Makefile").read_text()
    assert "--backend-store-uri" not in makefile and "MLFLOW_BACKEND_STORE_URI=" in makefile

    # what makes that work: the installed `mlflow server` (and `mlflow ui`) reads the variable
    from mlflow.cli import server

    (option,) = [p for p in server.params if p.name == "backend_store_uri"]
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI"


def test_no_committed_credentials():
    for path in (ROOT / "infra").rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace").lower()
            assert "password: change-me" not in text and "password=secret" not in text, path


def test_kubernetes_manifests_are_well_formed():
    docs = [d for d in yaml.safe_load_all((ROOT / "infra/k8s/lmforge.yaml").read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace",
        "StatefulSet",
        "Deployment",
        "Service",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    } <= kinds
    assert "PersistentVolumeClaim" in kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "lmforge", d["metadata"]["name"]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"].items() for w in workloads]
    for d, labels in zip(workloads, pod_labels, strict=True):
        assert d["spec"]["selector"]["matchLabels"].items() <= labels, d["metadata"]["name"]
    for svc in (d for d in docs if d["kind"] == "Service"):  # every Service selects some workload's pods
        name = svc["metadata"]["name"]
        assert any(svc["spec"]["selector"].items() <= labels for labels in pod_labels), name
    helm = yaml.safe_load((ROOT / "infra/helm/values.yaml").read_text())
    assert helm["worker"]["config"]["workPool"] == "lmforge-k8s"


# prefect-kubernetes' `_get_base_job_manifest()`: a job manifest must have these paths with these values
PREFECT_K8S_REQUIRED = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"labels": {}},
    "spec": {
        "template": {
            "spec": {
                "parallelism": 1,
                "completions": 1,
                "restartPolicy": "Never",
                "containers": [{"name": "prefect-job"}],
            }
        }
    },
}


def _rendered_pool_template() -> tuple[dict, dict, dict]:
    """(variables, job_configuration rendered with the variables' defaults as the worker does, Service)."""
    from prefect.utilities.templating import apply_values

    template, service = yaml.safe_load_all((ROOT / "infra/k8s/torchrun-multinode-job.yaml").read_text())
    props = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    return props, apply_values(template["job_configuration"], defaults), service


def test_torchrun_job_template_runs_the_flow_on_pod_0_and_joiners_elsewhere(tmp_path, monkeypatch):
    import jsonpatch

    from flows.lifecycle import resolve_config

    props, config, service = _rendered_pool_template()
    assert {"image", "nnodes", "gpus_per_node", "namespace", "command"} <= set(props)
    assert "command" not in config  # no default: the worker fills in `prefect flow-run execute`
    job = config["job_manifest"]
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == props["nnodes"]["default"] == 2
    # the worker's manifest validation (after its validators have added metadata.labels)
    ops = jsonpatch.JsonPatch.from_diff(
        {**job, "metadata": {"labels": {}, **job["metadata"]}}, PREFECT_K8S_REQUIRED
    )
    assert not [op for op in ops if op["op"] in ("add", "replace")], list(ops)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "args" not in container  # `{{ command }}` unset: the worker puts the flow-run command there

    # the headless Service resolves <job>-i.lmforge-rdzv for this Job's pods, at the endpoint port
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == pod["subdomain"] == "lmforge-rdzv"
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()

    # every pod mounts the shared artifacts claim of infra/k8s at LMFORGE_ARTIFACTS
    env = container["env"]
    values = {e["name"]: e.get("value") for e in env}
    (vol,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == vol["name"]]
    claim = _k8s()["PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert values["LMFORGE_ARTIFACTS"] == mount["mountPath"] == "/data/artifacts"

    # $(VAR) in an env value expands only variables defined earlier in the list
    names = [e["name"] for e in env]
    for i, e in enumerate(env):
        for ref in re.findall(r"\$\((\w+)\)", e.get("value") or ""):
            assert ref in names[:i], f"{e['name']} uses $({ref}) before it is defined"
    assert "job-completion-index" in str(env[names.index("NODE_RANK")]["valueFrom"])

    # LMFORGE_SET, as Kubernetes expands it, makes pod 0's flow a node-0 launch of the whole world
    job_name = "lmforge-pretrain-x7k2p"
    lmforge_set = values["LMFORGE_SET"].replace("$(JOB_NAME)", job_name)
    items = dict(item.split("=", 1) for item in shlex.split(lmforge_set))
    assert items == {
        "pretrain.nnodes": "2",
        "pretrain.nproc_per_node": "8",
        "pretrain.rdzv_endpoint": f"{job_name}-0.lmforge-rdzv:{service['spec']['ports'][0]['port']}",
        "pretrain.rdzv_id": job_name,
    }
    monkeypatch.setenv("LMFORGE_SET", lmforge_set)
    cfg = resolve_config(None, "gpt2", None).pretrain
    assert (cfg.nnodes, cfg.nproc_per_node, cfg.node_rank, cfg.rdzv_id) == (2, 8, 0, job_name)

    # the container command dispatches on NODE_RANK: run it, with a `python` that prints its argv
    sh, dash_c, script, arg0 = container["command"]
    assert (sh, dash_c) == ("/bin/sh", "-c")
    (tmp_path / "python").write_text('#!/bin/sh\necho python "$@"\n')
    (tmp_path / "python").chmod(0o755)

    def run(rank: str) -> list[str]:
        node_env = {
            "PATH": f"{tmp_path}:/usr/bin:/bin",
            "NODE_RANK": rank,
            "JOB_NAME": job_name,
            "LMFORGE_ARTIFACTS": values["LMFORGE_ARTIFACTS"],
        }
        argv = [sh, dash_c, script, arg0, "echo", "prefect", "flow-run", "execute"]
        return shlex.split(
            subprocess.run(argv, env=node_env, capture_output=True, text=True, check=True).stdout
        )

    assert run("0") == ["prefect", "flow-run", "execute"]
    # pod 0 marks its flow over whatever the outcome, keeps its exit code, and passes SIGTERM on to the flow
    shared = tmp_path / "artifacts"
    over = shared / "pretrain" / "rendezvous" / f"{job_name}.over"
    pod0_env = {
        "PATH": "/usr/bin:/bin",
        "NODE_RANK": "0",
        "JOB_NAME": job_name,
        "LMFORGE_ARTIFACTS": str(shared),
    }
    failed = subprocess.run([sh, dash_c, script, arg0, "sh", "-c", "exit 3"], env=pod0_env, timeout=30)
    assert failed.returncode == 3 and over.exists()
    over.unlink()
    pod0 = subprocess.Popen([sh, dash_c, script, arg0, "sleep", "60"], env=pod0_env)
    time.sleep(0.5)
    pod0.send_signal(signal.SIGTERM)
    assert pod0.wait(timeout=10) == 128 + signal.SIGTERM and over.exists()  # the flow got the signal
    joiner = run("1")
    assert joiner[:4] == ["python", "-m", "tasks.pretrain", "join"]
    assert (_flag(joiner, "--artifacts-root"), _flag(joiner, "--rdzv-id"), _flag(joiner, "--node-rank")) == (
        "/data/artifacts",
        job_name,
        "1",
    )


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _claim_mount(deployment: dict) -> tuple[str, str]:
    """(claim name, mount path) of a pod template's one PVC volume."""
    pod = deployment["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    (mount,) = [m for m in _container(deployment)["volumeMounts"] if m["name"] == vol["name"]]
    return vol["persistentVolumeClaim"]["claimName"], mount["mountPath"]


def test_kubernetes_dask_cluster():
    k8s = _k8s()
    service = k8s["Service", "dask-scheduler"]
    assert 8786 in [p["port"] for p in service["spec"]["ports"]]
    scheduler = k8s["Deployment", "dask-scheduler"]
    assert service["spec"]["selector"].items() <= scheduler["spec"]["template"]["metadata"]["labels"].items()
    sched = _container(scheduler)
    assert sched["command"][:2] == ["dask", "scheduler"] and _flag(sched["command"], "--port") == "8786"
    assert scheduler["spec"]["replicas"] == 1

    flow_runs = k8s["Deployment", "prefect-process-worker"]  # serves prefect.yaml's pool: the Dask client
    assert "--pool lmforge-process" in " ".join(_container(flow_runs)["args"])
    worker = k8s["Deployment", "dask-worker"]
    assert worker["spec"]["replicas"] >= 1
    container = _container(worker)
    assert container["image"] == sched["image"] == _container(flow_runs)["image"]
    assert container["image"].startswith(LMFORGE_IMAGE + ":")
    assert container["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    # the flow run's artifacts root, same claim, same path, named by LMFORGE_ARTIFACTS in both
    claim, path = _claim_mount(worker)
    assert _claim_mount(flow_runs) == (claim, path)
    assert "ReadWriteMany" in k8s["PersistentVolumeClaim", claim]["spec"]["accessModes"]
    for d in (worker, flow_runs):
        env = {e["name"]: e.get("value") for e in _container(d)["env"]}
        assert env["LMFORGE_ARTIFACTS"] == path
        assert urlparse(env["PREFECT_API_URL"]).hostname == "prefect-server"

    redis = k8s["Deployment", "redis"]
    assert _container(redis)["image"].startswith("redis:")
    assert [p["port"] for p in k8s["Service", "redis"]["spec"]["ports"]] == [6379]


def test_helm_dask_and_redis_values():
    helm = yaml.safe_load((ROOT / "infra/helm/values.yaml").read_text())
    k8s = _k8s()
    dask = helm["dask"]
    assert dask["scheduler"]["servicePort"] == 8786  # release `dask` -> service dask-scheduler:8786
    worker = dask["worker"]
    assert worker["replicas"] >= 1 and worker["threads_per_worker"] == 1
    assert worker["resources"]["limits"]["memory"] and worker["resources"]["limits"]["cpu"]
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert urlparse(env["PREFECT_API_URL"]).hostname == "prefect-server"
    (vol,) = worker["mounts"]["volumes"]
    (mount,) = worker["mounts"]["volumeMounts"]
    assert mount["name"] == vol["name"]
    # the claim and path of infra/k8s's flow-run worker
    assert (vol["persistentVolumeClaim"]["claimName"], mount["mountPath"]) == _claim_mount(
        k8s["Deployment", "prefect-process-worker"]
    )
    assert env["LMFORGE_ARTIFACTS"] == mount["mountPath"]
    assert dask["jupyter"]["enabled"] is False
    redis = helm["redis"]
    assert redis["architecture"] == "standalone" and redis["master"]["resources"]["limits"]["memory"]


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


def test_ci_installs_services_first_and_lints_after_the_tests():
    """Services come from `make services` before any test (tests only look for binaries); lint runs after
    the tests so their failures show first."""
    steps = [
        line.split()[1] for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("make ")
    ]
    assert steps.index("services") < steps.index("test") < steps.index("lint")
    script = ROOT / "infra/local/services.sh"
    assert f"@{script.relative_to(ROOT)}" in (ROOT / "Makefile").read_text()
    result = subprocess.run([script, "--check"], capture_output=True, text=True, timeout=30)
    assert result.returncode in (0, 1) and "services:" in result.stdout + result.stderr
