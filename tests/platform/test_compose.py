"""docker-compose.yml names only things that exist: no Docker engine runs here, so the
file is checked statically (and by `docker-compose config` when that is installed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = sorted(
    name
    for name, s in SERVICES.items()
    if "build" in s and s["build"]["dockerfile"].startswith("platform/docker/")
)
SETTINGS_ENV = set(
    re.findall(
        r"""os\.environ\.get\(\s*["']([A-Z0-9_]+)["']""", (REPO / "config/settings.py").read_text()
    )
) | set(
    re.findall(
        r"""env_(?:bool|list)\(\s*["']([A-Z0-9_]+)["']""", (REPO / "config/settings.py").read_text()
    )
)


def test_the_expected_services_are_there():
    assert {"postgres", "redis", "orthanc", "web", "worker-cpu", "worker-gpu", "beat"} <= set(
        SERVICES
    )
    assert {"web", "worker-cpu", "worker-gpu", "beat", "migrate"} <= set(APP_SERVICES)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_build_context_and_dockerfile_exist(name):
    build = SERVICES[name]["build"]
    context = REPO / build["context"]
    assert context.is_dir()
    assert (context / build["dockerfile"]).is_file()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_is_read_by_settings(name):
    env = SERVICES[name]["environment"]
    unknown = sorted(set(env) - SETTINGS_ENV)
    assert not unknown, f"{name} sets variables settings.py never reads: {unknown}"
    for required in ("DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ORTHANC_URL"):
        assert required in env


def _manage_commands() -> set[str]:
    from django.core.management import get_commands

    return set(get_commands())


@pytest.mark.parametrize("name", APP_SERVICES)
def test_commands_name_things_that_exist(name):
    command = SERVICES[name]["command"]
    assert isinstance(command, list), "use the exec form"
    executable = command[0]
    if executable == "gunicorn":
        module, _, attr = command[1].partition(":")
        assert (REPO / (module.replace(".", "/") + ".py")).is_file()
        assert re.search(
            rf"^{attr or 'application'}\s*=",
            (REPO / (module.replace(".", "/") + ".py")).read_text(),
            re.M,
        )
        config = command[command.index("--config") + 1]
        assert (REPO / config).is_file()
    elif executable == "celery":
        assert command[1:3] == ["-A", "worker"] and (REPO / "worker/celery.py").is_file()
        assert command[3] in {"worker", "beat"}
        if command[3] == "worker":
            queues = set(command[command.index("-Q") + 1].split(","))
            from worker.celery import CPU_QUEUE, GPU_QUEUE

            assert queues <= {CPU_QUEUE, GPU_QUEUE}
    elif executable == "python":
        assert command[1] == "manage.py" and command[2] in _manage_commands()
    else:
        pytest.fail(f"{name}: unexpected executable {executable!r}")


def test_workers_split_by_queue_and_the_gpu_worker_reserves_a_gpu():
    def queues(name):
        command = SERVICES[name]["command"]
        return command[command.index("-Q") + 1]

    assert queues("worker-cpu") == "cpu"
    assert queues("worker-gpu") == "gpu"
    devices = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in SERVICES["worker-cpu"]


def test_mounted_files_exist():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_orthanc_uses_dicomweb_and_the_postgresql_index():
    import json

    config = json.loads((REPO / "platform/orthanc/orthanc-docker.json").read_text())
    assert config["DicomWeb"]["Enable"] is True
    assert config["PostgreSQL"]["EnableIndex"] is True
    assert config["AuthenticationEnabled"] is True
    env = SERVICES["orthanc"]["environment"]
    assert env["ORTHANC__POSTGRESQL__HOST"] == "postgres"
    assert "ports" not in SERVICES["orthanc"], "Orthanc must not be published"


def test_env_example_names_are_used():
    names = re.findall(r"^([A-Z0-9_]+)=", (REPO / ".env.example").read_text(), re.M)
    compose_text = (REPO / "docker-compose.yml").read_text()
    unused = [n for n in names if n not in SETTINGS_ENV and f"${{{n}" not in compose_text]
    assert not unused, unused


def test_dockerfile_copies_and_runs_what_exists():
    dockerfile = (REPO / "platform/docker/Dockerfile").read_text()
    for path in re.findall(r"^COPY (?!\. )(.+) \./$", dockerfile, re.M)[0].split():
        assert (REPO / path).is_file(), path
    assert "platform/docker/gunicorn.conf.py" in dockerfile
    assert "collectstatic" in dockerfile


def test_docker_compose_validates_the_file(tmp_path):
    if shutil.which("docker-compose") is None:
        # `.ci/run` installs it (platform/services.sh install compose): CI never skips this.
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing in CI: run platform/services.sh install compose")
        pytest.skip("docker-compose not installed (platform/services.sh install compose)")
    env_file = REPO / ".env.example"
    done = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "--env-file", str(env_file), "config", "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Secrets are mandatory: without them the file refuses to render.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    clean_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "POSTGRES_", "ORTHANC_"))
    }
    bare = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "--env-file", str(empty), "config", "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=clean_env,
    )  # fmt: skip
    assert bare.returncode != 0 and "set " in bare.stderr
