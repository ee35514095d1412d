"""The deployments as a newcomer runs them: ``prefect deploy`` of ``deploy/prefect.yaml`` and a
process worker per pool on this host (a plain checkout), each deployment run once; the GPU
pool's Kubernetes job rendered by prefect-kubernetes and checked against the Kubernetes schema;
the images' Python checked against the project's.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port
from packaging.specifiers import SpecifierSet

from flows import deployment  # imports Prefect, which configures logging: before caplog's turn

pytest_plugins = ["flow_fixtures"]  # fixtures: harness
PREFECT = str(Path(sys.executable).with_name("prefect"))
TEMPLATE = REPO / "deploy" / "kubernetes" / "gpu-base-job-template.json"
K8S_VERSION = "1.33"  # a supported Kubernetes release (kubernetes-validate's offline schemas)


# --- images: the Python they run is the project's ----------------------------------------------

#: the python3 each Ubuntu LTS ships; another one needs a source that has it (deadsnakes)
UBUNTU_PYTHON = {"20.04": "3.8", "22.04": "3.10", "24.04": "3.12"}


def image_python(dockerfile: str) -> str:
    """The Python version an image's Dockerfile runs, or ValueError saying why it cannot."""
    base = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)[-1]
    if m := re.match(r"python:(\d+\.\d+)", base):
        return m.group(1)
    ubuntu = re.search(r"ubuntu(\d\d\.\d\d)", base)
    if ubuntu is None:
        raise ValueError(f"base image {base}: its Python is unknown to this check")
    wanted = set(re.findall(r"\bpython(3\.\d+)\b", dockerfile))
    if len(wanted) != 1:
        raise ValueError(f"base image {base}: installs Python {sorted(wanted) or 'none'}")
    version, stock = wanted.pop(), UBUNTU_PYTHON[ubuntu.group(1)]
    if version != stock and "ppa:deadsnakes/ppa" not in dockerfile:
        raise ValueError(f"base image {base} ships Python {stock}, not {version}, and no "
                         f"source of {version} is added")
    if f"python{version} -m venv" not in dockerfile:
        raise ValueError(f"base image {base}: the environment is not made with Python {version}")
    return version


def test_both_images_run_the_projects_python():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = project["tool"]["ruff"]["target-version"]  # "py311": what the code is checked for
    version = f"{target[2]}.{target[3:]}"
    assert version in SpecifierSet(project["project"]["requires-python"])
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        assert image_python((REPO / "deploy" / name).read_text()) == version, name
    old = ("FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04\nRUN apt-get install -y "
           "python3.11 python3.11-venv && python3.11 -m venv /venv\n")
    with pytest.raises(ValueError, match="ships Python 3.12, not 3.11"):
        image_python(old)  # the Dockerfile.cuda this replaced could not build


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_image_builds_and_runs_the_projects_python(name):
    """Opt-in (SAM2CT_TEST_DOCKER_BUILD=1, a Docker daemon, network): downloads GBs."""
    docker = shutil.which("docker")
    if os.environ.get("SAM2CT_TEST_DOCKER_BUILD") != "1" or docker is None or subprocess.run(
            [docker, "info"], capture_output=True).returncode != 0:
        pytest.skip("set SAM2CT_TEST_DOCKER_BUILD=1 where a Docker daemon runs to build images")
    tag = f"sam2ct-test-{name.lower().replace('.', '-')}"
    built = subprocess.run([docker, "build", "-q", "-t", tag, "-f", f"deploy/{name}", "."],
                           cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert built.returncode == 0, built.stderr[-3000:]
    ran = subprocess.run([docker, "run", "--rm", tag, "python", "-c",
                          "import sys, flows.deployment; print(sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=600)
    assert ran.stdout.strip() == "(3, 11)", ran.stderr[-3000:]


# --- the steps prefect.yaml runs ---------------------------------------------------------------

def test_schedule_timezone_is_set_or_defaulted_loudly(monkeypatch, caplog):
    monkeypatch.delenv("SAM2CT_TIMEZONE", raising=False)
    deployment._warn_default_timezone.cache_clear()
    with caplog.at_level(logging.WARNING, logger="flows.deployment"):
        assert deployment.schedule_timezone() == {"timezone": "UTC"}
    assert "SAM2CT_TIMEZONE is not set: the schedules run in UTC" in caplog.text
    monkeypatch.setenv("SAM2CT_TIMEZONE", "Europe/Amsterdam")
    assert deployment.schedule_timezone() == {"timezone": "Europe/Amsterdam"}
    monkeypatch.setenv("SAM2CT_TIMEZONE", "Europe/Atlantis")
    with pytest.raises(SystemExit, match="SAM2CT_TIMEZONE: Invalid 'timezone' value "
                                         "'Europe/Atlantis' - not an IANA timezone name"):
        deployment.schedule_timezone()


def test_code_directory_is_where_flows_are_imported_from(monkeypatch, tmp_path):
    monkeypatch.delenv("SAM2CT_CODE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert deployment.code_directory() == {"directory": str(REPO)}  # pip install -e .
    assert Path.cwd() == REPO and (Path.cwd() / "flows" / "harvest.py").is_file()
    monkeypatch.setenv("SAM2CT_CODE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"SAM2CT_CODE_DIR {tmp_path} holds no flows/"):
        deployment.code_directory()


@pytest.mark.slow
def test_code_directory_in_an_images_install(tmp_path):
    """The images install the project with `pip install .`, not editable: the pull step then
    enters that install, where Prefect finds the deployments' entrypoints."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    code = ("from flows.deployment import code_directory; print(code_directory()['directory'])\n"
            "from prefect.flows import load_flow_from_entrypoint\n"
            "print(load_flow_from_entrypoint('flows/segment_flow.py:segment_batch').name)")
    env = {k: v for k, v in os.environ.items() if k != "SAM2CT_CODE_DIR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**env, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(site), "segment-batch"]


# --- the GPU pool's Kubernetes job --------------------------------------------------------------

def _pod(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]


def _validate(manifest: dict) -> None:
    """The rendered Job against the Kubernetes schema: as sent (what the API server accepts
    by default), and strictly (no unknown field) once the two fields prefect-kubernetes
    requires in the pod spec are taken out: there the API server drops them with a warning."""
    import kubernetes_validate

    kubernetes_validate.validate(manifest, K8S_VERSION, strict=False)
    strict = copy.deepcopy(manifest)
    assert (_pod(strict).pop("parallelism"), _pod(strict).pop("completions")) == (1, 1)
    kubernetes_validate.validate(strict, K8S_VERSION, strict=True)
    assert "{{" not in json.dumps(manifest), "a placeholder left unrendered"


async def _render(client, pool, flow_run, job_variables: dict) -> dict:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config = await KubernetesWorkerJobConfiguration.from_template_and_values(
        pool.base_job_template, job_variables, client=client)
    config.prepare_for_flow_run(flow_run)  # what the worker does before it creates the Job
    return config.job_manifest


@pytest.mark.slow
def test_gpu_pool_job_renders_and_validates(harness):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.segment_flow import segment_batch

    doc = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    segment = next(d for d in doc["deployments"] if d["name"] == "segment")
    ours = segment["work_pool"]["job_variables"]  # the segment deployment's job variables

    async def render_all() -> tuple[dict, dict]:
        async with get_client() as client:
            # the server checks the template's placeholders against its variables
            pool = await client.create_work_pool(WorkPoolCreate(
                name="gpu-k8s", type="kubernetes",
                base_job_template=json.loads(TEMPLATE.read_text())))
            run = await client.create_flow_run(segment_batch, parameters={
                "series": [], "catalog_url": None, "output_dir": "/data/seg"})
            default = await _render(client, pool, run, ours)
            chosen = await _render(client, pool, run, {
                **ours, "gpus": 2, "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100"},
                "data_pvc": "harvest-rwx", "data_dir": "/mnt/sam2ct", "model_file": "v2.pt",
                "catalog_secret": "pg-prod"})
            return default, chosen

    default, chosen = asyncio.run(render_all())
    for manifest in (default, chosen):
        _validate(manifest)
    pod = _pod(default)
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    env = {e["name"]: e for e in container["env"]}
    assert env["SAM2CT_DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "sam2ct-catalog", "key": "database-url"}}
    assert env["SAM2CT_DEVICE"]["value"] == "cuda" and "PREFECT__FLOW_RUN_ID" in env
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert mounts["sam2ct-data"] == env["SAM2CT_DATA_DIR"]["value"] == "/data"
    assert volumes == {"sam2ct-data": "sam2ct-data", "models": "sam2ct-models"}
    assert env["SAM2CT_MODEL"]["value"] == "/models/sam2ct.pt" and mounts["models"] == "/models"
    assert container["args"] == ["prefect", "flow-run", "execute"]

    pod = _pod(chosen)
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100"}
    assert {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}[
        "sam2ct-data"] == "harvest-rwx"
    assert env["SAM2CT_DATA_DIR"]["value"] == "/mnt/sam2ct"
    assert env["SAM2CT_MODEL"]["value"] == "/models/v2.pt"
    assert env["SAM2CT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "pg-prod"


# --- prefect deploy, and each deployment run once on a process worker ---------------------------

def _plain_env(harness: str, **sam2ct: str) -> dict[str, str]:
    """This host's environment without SAM2CT_* settings, plus ``sam2ct`` and the API URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM2CT_")}
    env.update({"PREFECT_API_URL": harness, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"})
    env.update({f"SAM2CT_{k.upper()}": v for k, v in sam2ct.items()})
    return env


def _wait_final(client, run_id, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {run.name}: still {run.state.name} after {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture()
def empty_orthanc(tmp_path):
    """An Orthanc holding nothing: the harvest flows discover nothing and complete."""
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc (Debian package orthanc) is not installed")
    from pacs_peers import OrthancPeer

    store_port = free_port()
    peer = OrthancPeer(tmp_path / "orthanc", free_port(), free_port(), "SAM2CT",
                       store_port).start()
    yield peer, store_port
    peer.stop()


@pytest.mark.slow
def test_every_deployment_runs_on_a_process_worker_from_a_plain_checkout(harness, empty_orthanc,
                                                                        tmp_path):
    """`prefect deploy --all` from the checkout (no SAM2CT_TIMEZONE: UTC, said once), pools
    `cpu` and `gpu` of type process, a worker on each started outside the checkout; every
    deployment runs once and completes: the harvest flows against a real (empty) Orthanc, the
    segment deployment on a synthetic series, the export of what it segmented."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from sqlalchemy import select

    from db import open_catalog
    from db.models import HarvestRun
    from dicom_io.synth import make_studies

    orthanc, store_port = empty_orthanc
    data = tmp_path / "data"
    env = _plain_env(harness, pacs=orthanc.address, store_port=str(store_port),
                     data_dir=str(data), model="classical", segment_workers="0")
    with get_client(sync_client=True) as client:
        for pool in ("cpu", "gpu"):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--prefect-file",
                             "deploy/prefect.yaml", "--all"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    said = deploy.stdout + deploy.stderr
    assert deploy.returncode == 0, said[-3000:]
    assert said.count("SAM2CT_TIMEZONE is not set: the schedules run in UTC") == 1, said[-3000:]

    workers = [subprocess.Popen([PREFECT, "worker", "start", "--pool", pool], cwd=tmp_path,
                                env=env, stdout=(tmp_path / f"{pool}.log").open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
               for pool in ("cpu", "gpu")]
    manifest = json.loads(make_studies(tmp_path / "synth", studies=1, seed=5, size=96,
                                       slices=16).read_text())
    study = manifest["studies"][0]
    series = {"study_instance_uid": study["study_instance_uid"],
              "series_instance_uid": study["series_instance_uid"],
              "series_dir": str(tmp_path / "synth" / study["ct_dir"]),
              "gsps_files": [str(tmp_path / "synth" / g["file"]) for g in study["gsps"][:2]]}
    runs = {  # run one after another: a SQLite catalog, as a newcomer has
        "nightly-harvest/nightly-harvest": ({}, None),
        "backfill/backfill": ({"start": "2026-01-01", "end": "2026-01-02"}, None),
        "reconcile/reconcile": ({"start": "2026-01-01", "end": "2026-01-01"}, None),
        "segment-batch/segment": ({"series": [series], "catalog_url": None,
                                   "output_dir": str(data / "seg"), "model": "classical"},
                                  {"env": {"SAM2CT_DEVICE": "cpu"}}),  # no GPU on this host
        "export-dataset/export": ({"out": str(tmp_path / "export"), "fmt": "nnunet"}, None),
    }
    done = {}
    try:
        with get_client(sync_client=True) as client:
            for name, (parameters, job_variables) in runs.items():
                run = run_deployment(name, parameters=parameters, job_variables=job_variables,
                                     timeout=0)
                done[name] = _wait_final(client, run.id)
            deployments = {d.name: d for d in client.read_deployments()}
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:  # a loaded machine: its shutdown is not tested
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(30)
    logs = "".join((tmp_path / f"{p}.log").read_text()[-2000:] for p in ("cpu", "gpu"))
    for name, run in done.items():
        assert run.state.is_completed(), f"{name}: {run.state.name} {run.state.message}\n{logs}"
        assert run.infrastructure_pid, name  # run by a worker, in a process of its own
    for name in ("nightly-harvest", "reconcile"):
        assert [s.schedule.timezone for s in deployments[name].schedules] == ["UTC"]
    assert deployments["nightly-harvest"].pull_steps == [
        {"flows.deployment.code_directory": {}}]
    yesterday = dt.date.today() - dt.timedelta(days=1)
    with open_catalog(f"sqlite:///{data / 'catalog.sqlite'}").connect() as conn:
        windows = conn.execute(select(HarvestRun.window_start, HarvestRun.status)).all()
    assert {(w.date(), getattr(s, "value", s)) for w, s in windows} >= {
        (yesterday, "completed"), (dt.date(2026, 1, 1), "completed")}, windows
    assert len(list((data / "seg").rglob("*.dcm"))) >= 1  # the segment run wrote its SEGs
    dataset, = (tmp_path / "export").rglob("dataset.json")  # nnU-Net's, wherever the layout has it
    assert json.loads(dataset.read_text())["numTraining"] == 1  # the segmented series exported


@pytest.mark.slow
def test_deploy_with_an_unknown_timezone_stops_with_one_line(harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name="cpu", type="process"))
    out = subprocess.run([PREFECT, "--no-prompt", "deploy", "--prefect-file",
                          "deploy/prefect.yaml", "--name", "reconcile"], cwd=REPO,
                         env=_plain_env(harness, timezone="Europe/Atlantis"),
                         capture_output=True, text=True, timeout=600)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "Traceback" not in said, said[-3000:]
    assert said.strip().splitlines()[-1] == (
        "SAM2CT_TIMEZONE: Invalid 'timezone' value 'Europe/Atlantis' - not an IANA timezone "
        "name such as Europe/Amsterdam")
