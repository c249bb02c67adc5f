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


DOCKERFILE = (REPO / "platform/docker/Dockerfile").read_text()
# The image's defaults for the web server: `ENV GRANIAN_...=value` lines of the Dockerfile.
IMAGE_GRANIAN_ENV = dict(re.findall(r"\b(GRANIAN_[A-Z0-9_]+)=(\S+)", DOCKERFILE))


def _granian_env_names() -> set[str]:
    """The variables granian reads: one GRANIAN_<OPTION> per option (click's auto prefix)."""
    import click
    from granian.cli import cli

    return {f"GRANIAN_{p.name.upper()}" for p in cli.params if isinstance(p, click.Option)}


def _compose_default(value) -> str:
    """`${NAME:-default}` as compose renders it when NAME is unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_is_read_by_settings(name):
    env = SERVICES[name]["environment"]
    if SERVICES[name]["command"][0] == "granian":
        server_env = {k for k in env if k.startswith("GRANIAN_")}
        assert server_env <= _granian_env_names(), f"{name}: granian reads no {server_env}"
        env = {k: v for k, v in env.items() if k not in server_env}
    unknown = sorted(set(env) - SETTINGS_ENV)
    assert not unknown, f"{name} sets variables settings.py never reads: {unknown}"
    for required in ("DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ORTHANC_URL"):
        assert required in env


def _manage_commands() -> set[str]:
    from django.core.management import get_commands

    return set(get_commands())


def _check_granian_command(command: list[str], env: dict) -> dict:
    """Parse `command` as granian would, with `env` (compose defaults rendered) as its
    GRANIAN_* settings; the WSGI target and every file it names must exist."""
    import click
    from granian.cli import cli

    server_env = {k: _compose_default(v) for k, v in env.items() if k.startswith("GRANIAN_")}
    assert set(server_env) <= _granian_env_names(), f"granian reads no {set(server_env)}"
    saved = os.environ.copy()
    cwd = Path.cwd()
    try:
        for k in list(os.environ):
            if k.startswith("GRANIAN_"):
                del os.environ[k]
        os.environ.update(server_env)
        os.chdir(REPO)  # the image's WORKDIR is the repository
        ctx = cli.make_context("granian", list(command[1:]), auto_envvar_prefix="GRANIAN")
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
    params = ctx.params
    assert params["interface"] == "wsgi", params["interface"]
    module, _, attr = params["app"].partition(":")
    source = REPO / (module.replace(".", "/") + ".py")
    assert source.is_file(), source
    assert re.search(rf"^{attr or 'application'}\s*=", source.read_text(), re.M)
    # Files it reads (log config, TLS, env files, static mounts...) exist: no dangling path.
    for param in cli.params:
        value = params.get(param.name)
        if not isinstance(param.type, click.Path) or param.name in {"pid_file", "uds"}:
            continue
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path is not None:
                assert (REPO / path).exists(), f"granian --{param.name}: {path} is missing"
    return params


@pytest.mark.parametrize("name", APP_SERVICES)
def test_commands_name_things_that_exist(name):
    command = SERVICES[name]["command"]
    assert isinstance(command, list), "use the exec form"
    executable = command[0]
    if executable == "granian":
        env = {**IMAGE_GRANIAN_ENV, **SERVICES[name]["environment"]}
        _check_granian_command(command, env)
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
    copied = re.findall(r"^COPY (?!\. )(?!--from)(.+) \./$", dockerfile, re.M)
    assert len(copied) >= 3, copied  # the viewer's npm files, its sources, Python's
    for line in copied:
        for path in line.split():
            assert (REPO / path).exists(), path
    # The viewer is built in its own stage and its static files copied before collectstatic.
    assert "npm run build" in dockerfile
    assert dockerfile.index("COPY --from=viewer") < dockerfile.index("manage.py collectstatic")
    assert "collectstatic" in dockerfile
    # The image's default command is the web server, as compose's web service runs it.
    import json

    cmd = json.loads(re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)[-1])
    assert cmd == SERVICES["web"]["command"]
    params = _check_granian_command(cmd, IMAGE_GRANIAN_ENV)
    assert (params["host"], params["port"], params["log_access_enabled"]) == ("0.0.0.0", 8000, True)


def test_web_listens_where_compose_publishes_it_and_logs_requests():
    params = _check_granian_command(
        SERVICES["web"]["command"], {**IMAGE_GRANIAN_ENV, **SERVICES["web"]["environment"]}
    )
    assert params["host"] == "0.0.0.0"
    published = {p.rsplit(":", 1)[1] for p in SERVICES["web"]["ports"]}
    assert published == {str(params["port"])}
    assert params["log_access_enabled"] is True
    # WEB_CONCURRENCY keeps its meaning: the number of worker processes, 3 by default.
    assert SERVICES["web"]["environment"]["GRANIAN_WORKERS"] == "${WEB_CONCURRENCY:-3}"
    assert params["workers"] == 3


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
