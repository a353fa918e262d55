"""docker-compose.yaml, .env.example and docker/ checked without a Docker engine (none on CI).

What a `docker compose config` would catch, and more: the file against the Compose Specification's JSON schema
(check-jsonschema's vendored copy), before and after interpolation with .env.example; every variable it uses is
documented; every Airflow/MLflow/Celery command line parses with the CLIs of our own venv (same pinned versions as
the images); the Celery settings every Airflow process must share are identical; the workers cover the DAGs'
queues; the GPU worker reserves a GPU; health checks and start order make sense. The small scripts the images
run (bucket creation, PostgreSQL init, entrypoint) run for real against moto and the local PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import uuid
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
VENV_BIN = Path(sys.executable).parent

# Settings that must be the same string in every Airflow process (NOTES.md: the Celery topology).
SHARED_AIRFLOW_ENV = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__AUTH_MANAGER",
)
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
# What plugins/dealrec_airflow.py reads to find the lake, the models and MLflow.
DAG_LOCATION_ENV = ("DEALREC_LAKE", "DEALREC_MODEL_DIR", "DEALREC_WORK_DIR", "MLFLOW_TRACKING_URI")
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
)
# Who may hold each secret of .env (issue 14, item 12: least privilege). The S3 admin keys reach only the jobs that
# configure the S3 server; the MLflow admin only the server and the job that creates the tasks' user; the Airflow
# admin only the job that creates it (issue 29, item 13: not the workers, where task code runs); the tasks hold
# their own S3 keys (lake bucket) and their own MLflow login.
_AIRFLOW = frozenset(AIRFLOW_SERVICES)
SECRET_HOLDERS = {
    "S3_ADMIN_ACCESS_KEY": {"s3-config", "s3-init"},
    "S3_ADMIN_SECRET_KEY": {"s3-config", "s3-init"},
    "S3_WORKER_ACCESS_KEY": {"s3-config", *_AIRFLOW},
    "S3_WORKER_SECRET_KEY": {"s3-config", *_AIRFLOW},
    "S3_MLFLOW_ACCESS_KEY": {"s3-config", "mlflow"},
    "S3_MLFLOW_SECRET_KEY": {"s3-config", "mlflow"},
    "MLFLOW_ADMIN_PASSWORD": {"mlflow", "mlflow-init"},
    "MLFLOW_TRACKING_PASSWORD": {"mlflow-init", *_AIRFLOW},
    "MLFLOW_SERVER_SECRET_KEY": {"mlflow"},
    "MLFLOW_DB_PASSWORD": {"postgres", "mlflow"},
    "AIRFLOW_DB_PASSWORD": {"postgres", *_AIRFLOW},
    "POSTGRES_PASSWORD": {"postgres"},
    "AIRFLOW_ADMIN_PASSWORD": {"airflow-init"},
    "REDIS_PASSWORD": {"redis", *_AIRFLOW},
    "AIRFLOW_JWT_SECRET": set(_AIRFLOW),
    "AIRFLOW_API_SECRET_KEY": set(_AIRFLOW),
    "AIRFLOW_FERNET_KEY": set(_AIRFLOW),
}
SECRETS_OF_ROLES = tuple(n for n in SECRET_HOLDERS if n.startswith(("S3_", "MLFLOW_ADMIN", "MLFLOW_T", "MLFLOW_S")))
# Third-party images: the program their command or health check must start (their CLIs are not installed here).
THIRD_PARTY_PROGRAMS = {
    "postgres": {"/usr/local/bin/dealrec-check-secrets.sh", "pg_isready"},
    "redis": {"/usr/local/bin/dealrec-check-secrets.sh", "redis-cli"},
    "s3": {"weed", "wget"},
}


# ---------------------------------------------------------------------------------------------------------
# Compose's variable interpolation (the subset of the spec this file may use)
# ---------------------------------------------------------------------------------------------------------
_VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))"
)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert "=" in line, f"{path.name}:{n}: not NAME=value: {line!r}"
        name, value = line.split("=", 1)
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"{path.name}:{n}: bad variable name {name!r}"
        assert name not in env, f"{path.name}:{n}: {name} defined twice"
        env[name] = value
    return env


def interpolate(value, env: dict[str, str], used: set[str]):
    """Substitute ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``... like compose, in every string of ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, used) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        used.add(name)
        op, arg, current = m.group("op"), m.group("arg"), env.get(name)
        if op is None:
            assert not arg, f"unsupported interpolation {m.group(0)!r}"
            return current or ""
        unset = current is None or (op.startswith(":") and current == "")
        if op.endswith("-"):
            return arg if unset else current
        if unset:
            raise AssertionError(f"{m.group(0)}: required variable {name} is empty ({arg})")
        return current

    return _VAR.sub(sub, value)


@cache
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@cache
def resolved() -> tuple[dict, frozenset[str]]:
    """The compose file as `docker compose config` would see it with .env = .env.example."""
    used: set[str] = set()
    doc = interpolate(raw_compose(), read_env_file(ENV_EXAMPLE), used)
    return doc, frozenset(used)


def services() -> dict[str, dict]:
    return resolved()[0]["services"]


def env_of(service: str) -> dict[str, str]:
    env = services()[service].get("environment") or {}
    assert isinstance(env, dict), f"{service}: write environment as a mapping"
    return {k: "" if v is None else str(v) for k, v in env.items()}


def as_argv(command) -> list[str]:
    return list(map(str, command)) if isinstance(command, list) else shlex.split(command)


def shell_commands(script: str) -> list[list[str]]:
    """``a && b; c`` -> [[a...], [b...], [c...]] (the simple shell this file uses: no pipes, no subshells)."""
    out = []
    for part in re.split(r"&&|;|\|\|", script):
        words = shlex.split(part.strip())
        if words[:1] == ["exec"]:
            words = words[1:]
        if words and words[0] != "printf":
            out.append(words)
    return out


def program_lines(service: str) -> list[tuple[list[str], bool]]:
    """Every command line a service runs, with whether it goes through the image's entrypoint: its command (yes)
    and its health check (no: Docker runs it directly in the running container)."""
    svc = services()[service]
    lines = []
    entrypoint = as_argv(svc["entrypoint"]) if "entrypoint" in svc else []
    command = as_argv(svc["command"]) if "command" in svc else []
    full = entrypoint + command
    if full[:2] in (["/bin/sh", "-c"], ["sh", "-c"], ["bash", "-c"]):
        lines += [(argv, False) for argv in shell_commands(full[2])]
    elif full:
        lines.append((full, not entrypoint))
    test = (svc.get("healthcheck") or {}).get("test")
    if test:
        test = as_argv(test)
        if test[0] == "CMD-SHELL":
            lines += [(argv, False) for argv in shell_commands(" ".join(test[1:]))]
        elif test[0] == "CMD":
            lines.append((test[1:], False))
    return lines


def our_image_argv(argv: list[str], via_entrypoint: bool) -> tuple[str, list[str]]:
    """The program and arguments our images run: docker/entrypoint.sh runs mlflow/python/dealrec directly and
    hands everything else to the official entrypoint, which runs ``airflow <command>``."""
    if argv[0] == "airflow":
        return "airflow", argv[1:]
    if not via_entrypoint or argv[0] in ("mlflow", "python", "dealrec"):
        return argv[0], argv[1:]
    return "airflow", argv


# ---------------------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------------------
def _check_schema(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_matches_the_compose_spec_schema():
    _check_schema(COMPOSE)


def test_interpolated_compose_file_matches_the_schema(tmp_path):
    doc, _ = resolved()
    out = tmp_path / "docker-compose.resolved.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    _check_schema(out)


def test_docker_compose_config_when_available(tmp_path):
    """Where a Compose v2 CLI exists (not on CI), let it parse the real file with .env.example as .env."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` (Compose v2) here; the schema tests cover the file")
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yaml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    shutil.copytree(REPO / "docker", tmp_path / "docker")
    proc = subprocess.run([docker, "compose", "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------------------
# Variables
# ---------------------------------------------------------------------------------------------------------
def test_every_variable_is_documented_in_env_example_and_every_documented_one_is_used():
    _, used = resolved()
    documented = set(read_env_file(ENV_EXAMPLE))
    assert sorted(used - documented) == [], "used in docker-compose.yaml, missing from .env.example"
    assert sorted(documented - used) == [], "in .env.example, never used by docker-compose.yaml"


def test_published_ports_listen_on_this_machine_only_by_default():
    """None of the three speaks TLS: by default nothing is reachable from other hosts (issue 14, 12)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    published = {
        name: svc["ports"] for name, svc in compose["services"].items() if isinstance(svc, dict) and svc.get("ports")
    }
    assert set(published) >= {"s3", "mlflow", "airflow-apiserver"}, published
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)


def test_secrets_are_required_not_defaulted():
    """A forgotten secret must stop `docker compose up` with its name, never fall back to a public default."""
    text = COMPOSE.read_text()
    for name in ("AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD"):
        assert re.search(r"\$\{" + name + r":\?", text), f"{name} should be ${{{name}:?...}}"
    for name in (
        "AIRFLOW_DB_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "REDIS_PASSWORD",
        *SECRETS_OF_ROLES,
    ):
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), f"{name}: every use must be required"
    empty = {k: v for k, v in read_env_file(ENV_EXAMPLE).items() if k != "AIRFLOW_JWT_SECRET"}
    with pytest.raises(AssertionError, match="AIRFLOW_JWT_SECRET"):
        interpolate(raw_compose(), empty, set())


# ---------------------------------------------------------------------------------------------------------
# Airflow, Celery, MLflow settings
# ---------------------------------------------------------------------------------------------------------
def test_every_airflow_process_shares_the_celery_settings():
    assert set(AIRFLOW_SERVICES) <= set(services())
    reference = env_of("airflow-apiserver")
    for name in SHARED_AIRFLOW_ENV:
        assert name in reference, name
        for svc in AIRFLOW_SERVICES:
            assert env_of(svc).get(name) == reference[name], f"{svc}: {name} differs from the api-server's"
    assert reference["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert reference["AIRFLOW__API_AUTH__JWT_SECRET"] and reference["AIRFLOW__API__SECRET_KEY"]


def _port_of(service: str, flag: str, default: int) -> int:
    argv = as_argv(services()[service]["command"])
    return int(argv[argv.index(flag) + 1]) if flag in argv else default


def test_urls_point_at_the_services_that_serve_them():
    env = env_of("airflow-scheduler")
    pg = env_of("postgres")
    execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution.hostname, execution.port, execution.path) == (
        "airflow-apiserver",
        _port_of("airflow-apiserver", "--port", 8080),
        "/execution/",
    )
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = urlsplit(env[key])
        assert url.hostname == "postgres" and url.port == 5432, key
        assert (url.username, url.password, url.path.lstrip("/")) == (
            pg["AIRFLOW_DB_USER"],
            pg["AIRFLOW_DB_PASSWORD"],
            pg["AIRFLOW_DB_NAME"],
        ), key
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.hostname, broker.port) == ("redis", 6379)
    redis = as_argv(services()["redis"]["command"])
    assert broker.password == redis[redis.index("--requirepass") + 1], "the broker URL must carry Redis's password"

    mlflow = as_argv(services()["mlflow"]["command"])
    store = urlsplit(mlflow[mlflow.index("--backend-store-uri") + 1])
    assert (store.hostname, store.username, store.password, store.path.lstrip("/")) == (
        "postgres",
        pg["MLFLOW_DB_USER"],
        pg["MLFLOW_DB_PASSWORD"],
        pg["MLFLOW_DB_NAME"],
    )
    tracking = urlsplit(env["MLFLOW_TRACKING_URI"])
    assert (tracking.hostname, tracking.port) == ("mlflow", _port_of("mlflow", "--port", 5000))
    allowed = mlflow[mlflow.index("--allowed-hosts") + 1].split(",")
    assert tracking.netloc in allowed, "the tasks' Host header must be allowed by the MLflow server"

    s3 = urlsplit(env["AWS_ENDPOINT_URL"])
    assert s3.hostname == "s3" and f"-s3.port={s3.port}" in " ".join(as_argv(services()["s3"]["command"]))
    for svc in ("mlflow", "s3-init"):
        e = env_of(svc)
        endpoint = e.get("MLFLOW_S3_ENDPOINT_URL") or e.get("AWS_ENDPOINT_URL")
        assert endpoint == env["AWS_ENDPOINT_URL"], svc
    mlflow_init = urlsplit(env_of("mlflow-init")["MLFLOW_TRACKING_URI"])
    assert (mlflow_init.hostname, mlflow_init.port) == ("mlflow", _port_of("mlflow", "--port", 5000))


def test_bucket_job_creates_the_buckets_of_the_lake_and_of_mlflow():
    env = env_of("airflow-worker")
    argv = as_argv(services()["s3-init"]["command"])
    mlflow = as_argv(services()["mlflow"]["command"])
    artifacts = mlflow[mlflow.index("--artifacts-destination") + 1]
    buckets = {a.removeprefix("s3://").split("/")[0] for a in argv[2:]}
    assert buckets == {urlsplit(env["DEALREC_LAKE"]).hostname, urlsplit(artifacts).hostname}


def test_the_dags_find_their_locations_in_the_environment():
    plugin = (REPO / "plugins" / "dealrec_airflow.py").read_text()
    for name in DAG_LOCATION_ENV:
        assert f'"{name}"' in plugin, f"plugins/dealrec_airflow.py no longer reads {name}: update docker-compose.yaml"
        for svc in ("airflow-worker", "airflow-worker-gpu", "airflow-dag-processor"):
            assert env_of(svc).get(name), f"{svc}: {name} not set"
    lake = env_of("airflow-worker")["DEALREC_LAKE"]
    assert lake.startswith("s3://")


def _dag_values(keyword: str) -> set[str]:
    """Every literal queue/pool name the DAGs (and their plugin) give: ``queue="gpu"`` or ``"queue": "gpu"``."""
    values = set()
    for path in [*(REPO / "dags").glob("*.py"), *(REPO / "plugins").glob("*.py")]:
        text = path.read_text()
        values |= set(re.findall(rf'\b{keyword}\s*=\s*"([^"]+)"', text))
        values |= set(re.findall(rf'"{keyword}"\s*:\s*"([^"]+)"', text))
    return values


def _worker_queues() -> dict[str, list[str]]:
    out = {}
    for name, svc in services().items():
        argv = as_argv(svc.get("command") or [])
        if argv[:2] == ["celery", "worker"]:
            out[name] = argv[argv.index("-q") + 1].split(",") if "-q" in argv else ["default"]
    return out


def test_workers_consume_every_queue_the_dags_use_and_the_gpu_pool_exists():
    queues = _worker_queues()
    assert queues == {"airflow-worker": ["default"], "airflow-worker-gpu": ["gpu"]}
    consumed = {q for qs in queues.values() for q in qs}
    assert _dag_values("queue") <= consumed
    assert "gpu" in _dag_values("queue"), "the DAGs should send their GPU tasks to queue gpu"
    init = " ".join(as_argv(services()["airflow-init"]["command"]))
    for pool in _dag_values("pool"):
        assert f"airflow pools set {pool} " in init, f"pool {pool!r} used by the DAGs is not created by airflow-init"


def test_gpu_worker_reserves_an_nvidia_gpu_and_has_its_own_celery_hostname():
    gpu = services()["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert gpu["build"]["dockerfile"] == "docker/gpu-worker.Dockerfile"
    argv = as_argv(gpu["command"])
    assert argv[argv.index("--celery-hostname") + 1].startswith("gpu@")
    assert "gpu@" in " ".join(as_argv(gpu["healthcheck"]["test"])), "the health check must ping the gpu@ node"
    # The LLM tasks run on the gpu worker, but `register` (default queue) fingerprints the same base model
    # directory, and the tiny LLM built by one worker is read by the other: both mount the same paths.
    for svc in ("airflow-worker", "airflow-worker-gpu"):
        mounts = [str(v) for v in services()[svc]["volumes"]]
        assert any(m.endswith(":/models/base:ro") for m in mounts), f"{svc}: base model not mounted read-only"
        assert any(str(v).startswith("models:") for v in services()[svc]["volumes"]), svc
        assert any(str(v).startswith("work:") for v in services()[svc]["volumes"]), svc


# ---------------------------------------------------------------------------------------------------------
# Health checks and start order
# ---------------------------------------------------------------------------------------------------------
def test_long_running_services_have_health_checks_and_jobs_do_not_restart():
    for name, svc in services().items():
        if svc.get("restart") == "no":
            assert "healthcheck" not in svc, f"{name} is a one-shot job"
            continue
        hc = svc.get("healthcheck")
        assert hc and hc.get("test"), f"{name}: no health check"
        assert hc.get("interval") and hc.get("retries"), name


def test_depends_on_conditions_match_what_the_dependency_offers():
    for name, svc in services().items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services(), f"{name} depends on unknown {dep}"
            target = services()[dep]
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep} to be healthy; it has no health check"
            elif spec["condition"] == "service_completed_successfully":
                assert target.get("restart") == "no", f"{name} waits for {dep} to finish; it is not a job"
    # Every Airflow process but the api-server and the init job needs the execution API up.
    for svc in AIRFLOW_SERVICES:
        deps = services()[svc].get("depends_on") or {}
        if svc != "airflow-init":
            assert deps.get("airflow-init", {}).get("condition") == "service_completed_successfully", svc
        if svc not in ("airflow-init", "airflow-apiserver"):
            assert deps.get("airflow-apiserver", {}).get("condition") == "service_healthy", svc


# ---------------------------------------------------------------------------------------------------------
# Every command line is real: parsed by the CLIs of this venv (the pinned versions the images install)
# ---------------------------------------------------------------------------------------------------------
_PARSE_CLIS = textwrap.dedent(
    """
    import json, sys
    import click

    def parse_click(group, name, args):
        cmd, ctx = group, None
        while True:
            ctx = cmd.make_context(name, list(args), parent=ctx)
            if not isinstance(cmd, click.Group):
                return
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                raise click.UsageError(f"{name}: missing subcommand")
            name, cmd, args = cmd.resolve_command(ctx, rest)

    errors = []
    for program, args in json.load(sys.stdin):
        try:
            if program == "airflow":
                from airflow.cli.cli_parser import get_parser
                get_parser().parse_args(args)
            elif program == "mlflow":
                from mlflow.cli import cli
                parse_click(cli, "mlflow", args)
            elif program == "celery":
                from celery.bin.celery import celery
                parse_click(celery, "celery", args)
            else:
                raise ValueError(f"no parser for {program}")
        except SystemExit as exc:
            if exc.code not in (0, None):
                errors.append(f"{program} {' '.join(args)}: exit {exc.code}")
        except Exception as exc:
            errors.append(f"{program} {' '.join(args)}: {type(exc).__name__}: {exc}")
    print(json.dumps(errors))
    """
)


def test_every_command_line_parses_with_the_real_clis(tmp_path):
    to_parse, checked = [], set()
    for name, svc in services().items():
        for argv, via_entrypoint in program_lines(name):
            if name in THIRD_PARTY_PROGRAMS:
                assert argv[0] in THIRD_PARTY_PROGRAMS[name], f"{name}: unexpected program {argv[0]}"
                checked.add(name)
                continue
            assert "image" in svc and "build" in svc, f"{name}: our services build our images"
            program, args = our_image_argv(argv, via_entrypoint)
            if program == "python":
                script = args[0]
                assert script.startswith("/opt/dealrec/"), script
                assert (REPO / "docker" / Path(script).name).is_file(), script
                assert f"docker/{Path(script).name}" in (REPO / "docker" / "airflow.Dockerfile").read_text()
            elif program == "curl":
                assert urlsplit(args[-1]).hostname == "localhost", f"{name}: health check must probe itself"
            else:
                assert program in ("airflow", "mlflow", "celery"), f"{name}: {argv}"
                to_parse.append((program, args))
            checked.add(name)
    assert checked == set(services()), f"no command checked for {set(services()) - checked}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/airflow.db",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_CLIS],
        input=json.dumps(to_parse),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert errors == [], "\n".join(errors) + "\n" + proc.stderr[-3000:]
    assert {p for p, _ in to_parse} == {"airflow", "mlflow", "celery"}


def test_the_cli_check_catches_a_bad_flag(tmp_path):
    """The parser harness itself: a misspelt flag and an unknown subcommand are errors, not silently accepted."""
    bad = [
        ("airflow", ["celery", "worker", "--hostname", "x"]),
        ("airflow", ["dag-processr"]),
        ("mlflow", ["server", "--backend-store", "x"]),
        ("celery", ["--app", "x", "inspect", "ping", "--nope"]),
    ]
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path}/airflow.db"
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_CLIS], input=json.dumps(bad), capture_output=True, text=True, env=env
    )
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == len(bad), errors


# ---------------------------------------------------------------------------------------------------------
# The images
# ---------------------------------------------------------------------------------------------------------
def _lock_pin(package: str) -> str:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(package + "=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{package} not pinned in requirements.lock")


@pytest.mark.parametrize("dockerfile", ["airflow.Dockerfile", "gpu-worker.Dockerfile"])
def test_dockerfiles_match_the_lock_and_copy_what_exists(dockerfile):
    text = (REPO / "docker" / dockerfile).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    assert args["AIRFLOW_VERSION"] == _lock_pin("apache-airflow")
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}$", text, flags=re.M)
    requires = re.search(r'requires-python = ">=(\d+\.\d+)', (REPO / "pyproject.toml").read_text()).group(1)
    assert args["PYTHON_VERSION"] == requires
    ignore = (REPO / "docker" / f"{dockerfile}.dockerignore").read_text().splitlines()
    for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", text, flags=re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (REPO / src).exists(), f"{dockerfile}: COPY {src}: no such path"
            assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{dockerfile}: {src} is excluded from the context"
    assert 'ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/dealrec/entrypoint.sh"]' in text
    if dockerfile == "gpu-worker.Dockerfile":
        assert args["TORCH_VERSION"] == _lock_pin("torch").split("+")[0]
        assert "/whl/cu" in args["TORCH_CUDA_INDEX_URL"]


def test_entrypoint_runs_our_programs_directly(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "docker" / "entrypoint.sh"), "python", "-c", "print('ran directly')"],
        env={"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ran directly"
    assert os.access(REPO / "docker" / "entrypoint.sh", os.X_OK)
    assert os.access(REPO / "docker" / "postgres" / "init-databases.sh", os.X_OK)


def test_bucket_job_is_idempotent_on_a_real_s3_endpoint(s3_endpoint, s3_client):
    sys.path.insert(0, str(REPO / "docker"))
    try:
        import create_buckets
    finally:
        sys.path.remove(str(REPO / "docker"))
    from dealrec_tasks.config import S3Config

    lake, artifacts = f"lake-{uuid.uuid4().hex[:8]}", f"mlflow-{uuid.uuid4().hex[:8]}"
    cfg = S3Config(endpoint_url=s3_endpoint, access_key="testing", secret_key="testing")
    names = [create_buckets.bucket_name(f"s3://{lake}/lake"), create_buckets.bucket_name(f"s3://{artifacts}/x")]
    assert create_buckets.create_buckets(names, cfg, wait_s=10) == [lake, artifacts]
    assert create_buckets.create_buckets(names, cfg, wait_s=10) == []
    assert {lake, artifacts} <= {b["Name"] for b in s3_client.list_buckets()["Buckets"]}
    with pytest.raises(SystemExit, match="not reachable"):
        create_buckets.create_buckets(
            ["x"], S3Config(endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b"), wait_s=0
        )


def _psql(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-tA", *args], capture_output=True, text=True)


def test_postgres_init_creates_both_databases_once():
    if shutil.which("psql") is None or _psql("-c", "select 1").returncode != 0:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 (.ci/run starts it)")
    tag = uuid.uuid4().hex[:8]
    names = {"AIRFLOW_DB_USER": f"af_{tag}", "AIRFLOW_DB_NAME": f"af_{tag}"}
    names |= {"MLFLOW_DB_USER": f"ml_{tag}", "MLFLOW_DB_NAME": f"mldb_{tag}"}
    env = {**os.environ, **names, "AIRFLOW_DB_PASSWORD": "pa", "MLFLOW_DB_PASSWORD": "pm", "PGHOST": "127.0.0.1"}
    env["POSTGRES_USER"] = "postgres"
    script = str(REPO / "docker" / "postgres" / "init-databases.sh")
    try:
        for _ in range(2):  # a second run (a restarted container) changes nothing and does not fail
            proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        owners = _psql("-c", f"select datname, pg_get_userbyid(datdba) from pg_database where datname like '%{tag}'")
        assert sorted(owners.stdout.split()) == sorted([f"af_{tag}|af_{tag}", f"mldb_{tag}|ml_{tag}"])
    finally:
        for db in (names["AIRFLOW_DB_NAME"], names["MLFLOW_DB_NAME"]):
            _psql("-c", f"drop database if exists {db}")
        for role in (names["AIRFLOW_DB_USER"], names["MLFLOW_DB_USER"]):
            _psql("-c", f"drop role if exists {role}")


# ---------------------------------------------------------------------------------------------------------
# Security of the stack (issue 14, item 12): least-privilege identities, MLflow login, no placeholder secrets
# ---------------------------------------------------------------------------------------------------------
def _docker_module(name: str):
    sys.path.insert(0, str(REPO / "docker"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO / "docker"))


def _distinct_secrets_env() -> dict[str, str]:
    """.env.example with every secret set to a value of its own, so each can be traced to where it lands."""
    env = read_env_file(ENV_EXAMPLE)
    for name in SECRET_HOLDERS:
        env[name] = f"{name.lower().replace('_', '')}{uuid.uuid4().hex[:12]}"
    return env


def test_each_secret_reaches_only_the_services_that_need_it():
    """The S3 admin keys only in s3-config and s3-init; MLflow's admin only in mlflow and mlflow-init; Airflow's admin
    only in airflow-init; the workers, the scheduler and MLflow hold their own identities, never an admin's."""
    env = _distinct_secrets_env()
    doc = interpolate(raw_compose(), env, set())
    where: dict[str, set[str]] = {name: set() for name in SECRET_HOLDERS}
    for svc_name, svc in doc["services"].items():
        # Environment, command and entrypoint: anything the service's processes can read.
        text = json.dumps([svc.get("environment"), svc.get("command"), svc.get("entrypoint")])
        for name in SECRET_HOLDERS:
            if env[name] in text:
                where[name].add(svc_name)
    assert where == SECRET_HOLDERS
    for svc in ("airflow-worker", "airflow-worker-gpu", "airflow-scheduler", "mlflow"):
        held = {n for n, holders in where.items() if svc in holders}
        assert not held & {"S3_ADMIN_ACCESS_KEY", "S3_ADMIN_SECRET_KEY"}, (svc, held)
        if svc != "mlflow":  # the server itself bootstraps its admin
            assert "MLFLOW_ADMIN_PASSWORD" not in held, (svc, held)
            assert "AIRFLOW_ADMIN_PASSWORD" not in held, (svc, held)  # task code runs there
    assert not (services()["s3"].get("environment") or {}), "the S3 server reads its identities from a file"


def test_s3_identities_are_scoped_to_their_buckets(tmp_path):
    s3_identities = _docker_module("s3_identities")
    argv = as_argv(services()["s3-config"]["command"])
    lake, artifacts = argv[2], argv[3]
    out = Path(argv[argv.index("--out") + 1])
    # The s3 server reads the file the job writes, through the volume they share.
    config_flag = next(a for a in " ".join(as_argv(services()["s3"]["command"])).split() if a.startswith("-s3.config="))
    assert config_flag == f"-s3.config={out}"
    shared = {v.split(":")[0] for v in services()["s3-config"]["volumes"]} & {
        v.split(":")[0] for v in services()["s3"]["volumes"]
    }
    assert shared and all(
        str(out).startswith(v.split(":")[1]) for v in services()["s3"]["volumes"] if v.startswith(tuple(shared))
    )

    env = {k: f"{k.lower()}-value" for k in ("S3_ADMIN_ACCESS_KEY", "S3_WORKER_ACCESS_KEY", "S3_MLFLOW_ACCESS_KEY")}
    env |= {"S3_ADMIN_SECRET_KEY": 'a"b\\\\c', "S3_WORKER_SECRET_KEY": "w", "S3_MLFLOW_SECRET_KEY": "m"}
    target = tmp_path / "cfg" / "s3.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "docker" / "s3_identities.py"), lake, artifacts, "--out", str(target)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    doc = json.loads(target.read_text())  # a quote or backslash in a key cannot break the file
    by_name = {i["name"]: i for i in doc["identities"]}
    assert by_name["dealrec-admin"]["credentials"][0]["secretKey"] == 'a"b\\\\c'
    lake_bucket, artifact_bucket = urlsplit(lake).hostname, urlsplit(artifacts).hostname
    assert sorted(by_name["dealrec-worker"]["actions"]) == sorted(
        f"{a}:{lake_bucket}" for a in ("Read", "Write", "List")
    )
    assert sorted(by_name["dealrec-mlflow"]["actions"]) == sorted(
        f"{a}:{artifact_bucket}" for a in ("Read", "Write", "List")
    )
    assert "Admin" in by_name["dealrec-admin"]["actions"]
    unscoped = [a for n, i in by_name.items() if n != "dealrec-admin" for a in i["actions"] if ":" not in a]
    assert unscoped == [], "only the admin may act on every bucket"

    with pytest.raises(SystemExit, match="share bucket"):
        s3_identities.identities(env, "s3://one/lake", "s3://one/mlflow")
    with pytest.raises(SystemExit, match="S3_MLFLOW_ACCESS_KEY is the same access key as S3_ADMIN_ACCESS_KEY"):
        s3_identities.identities({**env, "S3_MLFLOW_ACCESS_KEY": env["S3_ADMIN_ACCESS_KEY"]}, lake, artifacts)
    with pytest.raises(SystemExit, match="S3_WORKER_ACCESS_KEY and S3_WORKER_SECRET_KEY"):
        s3_identities.identities({**env, "S3_WORKER_SECRET_KEY": ""}, lake, artifacts)


def _our_services() -> list[str]:
    return [n for n, svc in services().items() if "build" in svc]


def test_every_service_of_our_images_checks_the_secrets_it_holds():
    """Each secret-looking variable of a service built from our images is listed in its DEALREC_REQUIRED_SECRETS,
    and with .env.example copied as it is to .env every such service refuses to start."""
    check_secrets = _docker_module("check_secrets")
    secret_like = re.compile(
        r"PASSWORD|SECRET|FERNET|SQL_ALCHEMY_CONN|RESULT_BACKEND|BROKER_URL|DATABASE_URI|ACCESS_KEY"
    )
    for name in _our_services():
        env = env_of(name)
        listed = set(env.get("DEALREC_REQUIRED_SECRETS", "").split())
        held = {k for k in env if secret_like.search(k) and k != "DEALREC_REQUIRED_SECRETS"}
        assert listed == held, f"{name}: DEALREC_REQUIRED_SECRETS {sorted(listed)} != secrets held {sorted(held)}"
        if held:
            errors = check_secrets.check(env)
            assert errors and all(e.startswith("refusing to start: ") for e in errors), name
    pg = subprocess.run(["sh", str(REPO / "docker" / "postgres" / "check-secrets.sh")], env=env_of("postgres"))
    assert pg.returncode == 1


def _fernet() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


_GOOD = {
    "AIRFLOW__CORE__FERNET_KEY": None,  # filled per test: a fresh key
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:Zx9_long-enough@postgres:5432/airflow",
    "AIRFLOW__API__SECRET_KEY": "k" * 20,
    "MLFLOW_TRACKING_PASSWORD": "p" * 16,
    "AIRFLOW__CELERY__BROKER_URL": "redis://:Rd9_long-enough@redis:6379/0",
}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AIRFLOW__CORE__FERNET_KEY", "", "AIRFLOW__CORE__FERNET_KEY (AIRFLOW_FERNET_KEY in .env) is empty"),
        ("AIRFLOW__CORE__FERNET_KEY", "change-me", "AIRFLOW_FERNET_KEY in .env) is still the .env.example placeholder"),
        (
            "AIRFLOW__CORE__FERNET_KEY",
            "not-a-key",
            "AIRFLOW__CORE__FERNET_KEY (AIRFLOW_FERNET_KEY in .env) is not a Fernet key",
        ),
        ("AIRFLOW__CORE__FERNET_KEY", None, "AIRFLOW__CORE__FERNET_KEY (AIRFLOW_FERNET_KEY in .env) is not set"),
        (
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "postgresql+psycopg2://airflow:change-me@postgres:5432/airflow",
            "(AIRFLOW_DB_PASSWORD in .env): its password is still the .env.example placeholder 'change-me'",
        ),
        ("AIRFLOW__API__SECRET_KEY", "  ", "AIRFLOW__API__SECRET_KEY (AIRFLOW_API_SECRET_KEY in .env) is empty"),
        ("MLFLOW_TRACKING_PASSWORD", "short", "MLFLOW_TRACKING_PASSWORD is shorter than 12 characters"),
        (
            "AIRFLOW__CELERY__BROKER_URL",
            "redis://:change-me@redis:6379/0",
            "(REDIS_PASSWORD in .env): its password is still the .env.example placeholder 'change-me'",
        ),
        ("AIRFLOW__CELERY__BROKER_URL", "redis://:@redis:6379/0", "(REDIS_PASSWORD in .env): its password is empty"),
        ("AIRFLOW__CELERY__BROKER_URL", "redis://redis:6379/0", "(REDIS_PASSWORD in .env) is a URL without a password"),
    ],
)
def test_entrypoint_refuses_to_start_with_a_bad_secret(tmp_path, name, value, message):
    env = {
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "DEALREC_REQUIRED_SECRETS": ",".join(_GOOD),
        **_GOOD,
        "AIRFLOW__CORE__FERNET_KEY": f"{_fernet()},{_fernet()}",  # a rotation list is valid
    }
    entrypoint = ["bash", str(REPO / "docker" / "entrypoint.sh"), "python", "-c", "print('started')"]
    ok = subprocess.run(entrypoint, env=env, capture_output=True, text=True)
    assert (ok.returncode, ok.stdout.strip()) == (0, "started"), ok.stderr
    if value is None:
        del env[name]
    else:
        env[name] = value
    bad = subprocess.run(entrypoint, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "started" not in bad.stdout
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], bad.stderr
    assert value in (None, "", "  ", "change-me") or value not in lines[0].replace(message, ""), "never echo a secret"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("POSTGRES_PASSWORD", "change-me", "POSTGRES_PASSWORD is still the .env.example placeholder"),
        ("AIRFLOW_DB_PASSWORD", "", "AIRFLOW_DB_PASSWORD is empty"),
        ("MLFLOW_DB_PASSWORD", "p@ss/word", "MLFLOW_DB_PASSWORD has a character other than"),
    ],
)
def test_postgres_refuses_to_start_with_a_bad_password(tmp_path, name, value, message):
    """docker/postgres/check-secrets.sh, run with a stand-in for the image's docker-entrypoint.sh."""
    fake = tmp_path / "docker-entrypoint.sh"
    fake.write_text('#!/bin/sh\necho "handed over: $*"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "POSTGRES_PASSWORD": "Pg_pass-1", "AIRFLOW_DB_PASSWORD": "Af.pass~2"}
    env["MLFLOW_DB_PASSWORD"] = "Mlpass3"
    script = str(REPO / "docker" / "postgres" / "check-secrets.sh")
    ok = subprocess.run([script, "postgres"], env=env, capture_output=True, text=True)
    assert (ok.returncode, ok.stdout.strip()) == (0, "handed over: postgres"), ok.stderr
    bad = subprocess.run([script, "postgres"], env={**env, name: value}, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and message in bad.stderr, bad.stderr
    assert os.access(script, os.X_OK)


def test_redis_requires_the_password_of_env_and_refuses_a_bad_one(tmp_path):
    """Redis (the Celery broker) asks for REDIS_PASSWORD; its health check and the broker URL of every Airflow process
    carry it; the redis service refuses to start with an empty, `change-me` or URL-unsafe one (issue 29, item 13)."""
    env = _distinct_secrets_env()
    redis = interpolate(raw_compose(), env, set())["services"]["redis"]
    argv = as_argv(redis["entrypoint"]) + as_argv(redis["command"])
    assert argv[:2] == ["/usr/local/bin/dealrec-check-secrets.sh", "redis-server"], argv
    assert argv[argv.index("--requirepass") + 1] == env["REDIS_PASSWORD"]
    assert redis["environment"]["REDISCLI_AUTH"] == env["REDIS_PASSWORD"], "redis-cli (the health check) logs in"
    assert redis["environment"]["DEALREC_REQUIRED_SECRETS"].split() == ["REDIS_PASSWORD"]
    assert "./docker/postgres/check-secrets.sh:/usr/local/bin/dealrec-check-secrets.sh:ro" in redis["volumes"]
    assert "ports" not in redis, "the broker is reached on the compose network only"
    for svc in AIRFLOW_SERVICES:
        assert urlsplit(env_of(svc)["AIRFLOW__CELERY__BROKER_URL"]).password == "change-me"  # .env.example's
        assert "AIRFLOW__CELERY__BROKER_URL" in env_of(svc)["DEALREC_REQUIRED_SECRETS"].split(), svc

    fake = tmp_path / "docker-entrypoint.sh"
    fake.write_text('#!/bin/sh\necho "handed over: $*"\n')
    fake.chmod(0o755)
    script = str(REPO / "docker" / "postgres" / "check-secrets.sh")
    base = {"PATH": f"{tmp_path}:/usr/bin:/bin", "DEALREC_REQUIRED_SECRETS": "REDIS_PASSWORD"}
    ok = subprocess.run([script, "redis-server"], env={**base, "REDIS_PASSWORD": "Rd_pass-1"}, capture_output=True)
    assert (ok.returncode, ok.stdout.strip()) == (0, b"handed over: redis-server"), ok.stderr
    for value, message in [
        ("change-me", "REDIS_PASSWORD is still the .env.example placeholder"),
        ("", "REDIS_PASSWORD is empty"),
        ("pa ss@word", "REDIS_PASSWORD has a character other than"),
    ]:
        bad = subprocess.run(
            [script, "redis-server"], env={**base, "REDIS_PASSWORD": value}, capture_output=True, text=True
        )
        assert bad.returncode == 1 and bad.stdout == "" and message in bad.stderr, (value, bad.stderr)
    bad = subprocess.run([script, "x"], env={**base, "DEALREC_REQUIRED_SECRETS": "A;b"}, capture_output=True, text=True)
    assert bad.returncode == 1 and "not a variable name" in bad.stderr, bad.stderr


def test_the_broker_url_is_masked_where_it_is_printed():
    """Airflow masks the option (sensitive), Celery's worker banner masks it, and so does redact_uri."""
    from kombu.utils.url import maybe_sanitize_url

    from dealrec_tasks.tracking.config import redact_uri

    url = "redis://:S3CRETPW@redis:6379/0"
    assert "S3CRETPW" not in maybe_sanitize_url(url) and "S3CRETPW" not in redact_uri(url)
    info = subprocess.run(
        [sys.executable, "-c", "from airflow.providers.celery.get_provider_info import get_provider_info as g; "
         "print(g()['config']['celery']['options']['broker_url']['sensitive'])"],
        capture_output=True, text=True, env={**os.environ, "AIRFLOW_HOME": "/nonexistent-airflow-home"},
    )  # fmt: skip
    assert info.stdout.strip() == "True", info.stderr[-2000:]


def test_airflow_logins_are_fab_users_and_the_admin_is_made_at_init():
    """The FAB auth manager in every Airflow process (users and roles in the database; the DEALRec view's per-DAG check
    means something), pinned like the other providers; the admin of .env created by airflow-init, the only service
    that holds its password; no SimpleAuthManager setting left (issue 29, item 13)."""
    for svc in AIRFLOW_SERVICES:
        env = env_of(svc)
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == FAB_AUTH_MANAGER, svc
        assert not [k for k in env if "SIMPLE_AUTH_MANAGER" in k], svc
        assert ("AIRFLOW_ADMIN_PASSWORD" in env) == (svc == "airflow-init"), svc
    init = env_of("airflow-init")
    assert init["AIRFLOW_ADMIN_PASSWORD"] and init["AIRFLOW_ADMIN_USER"]
    steps = shell_commands(as_argv(services()["airflow-init"]["command"])[2])
    assert steps[0][:3] == ["airflow", "db", "migrate"], "the users script needs FAB's tables"
    assert steps[-1] == ["python", "/opt/dealrec/create_airflow_users.py"], steps
    pin = _lock_pin("apache-airflow-providers-fab")
    assert f'"apache-airflow-providers-fab=={pin}"' in (REPO / "pyproject.toml").read_text()
    from importlib.metadata import version

    assert version("apache-airflow-providers-fab") == pin, "this venv runs the version the images install"


def _private_files_written(tmp_path: Path, argv: list[str], env: dict[str, str], secrets_: list[str]) -> list[Path]:
    """Run ``argv`` with umask 000 (nothing masked by the caller) after planting world-readable ``.tmp`` files where
    earlier runs could have left them; return the files under ``tmp_path`` holding a secret, failing on any that is
    not 0600."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc.stderr[-3000:]
    holding = [
        p for p in tmp_path.rglob("*") if p.is_file() and any(x in p.read_text(errors="replace") for x in secrets_)
    ]
    loose = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in holding if p.stat().st_mode & 0o077}
    assert loose == {}, f"files holding a secret readable by others: {loose}"
    return holding


def test_files_holding_secrets_are_for_their_owner_only(tmp_path):
    """Every file our images' scripts write with a secret in it is 0600, whatever the umask, even over a leftover
    world-readable temporary file (issue 29, item 13); the entrypoint writes no Airflow login file at all."""
    ini = tmp_path / "mlflow" / "basic_auth.ini"
    ini.parent.mkdir()
    (ini.parent / "basic_auth.ini.tmp").write_text("stale")
    (ini.parent / "basic_auth.ini.tmp").chmod(0o666)
    env = {
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW_ADMIN_USER": "alice",
        "AIRFLOW_ADMIN_PASSWORD": "AdminSecret-123",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "airflow" / "passwords.json"),
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_DATABASE_URI": "postgresql+psycopg2://mlflow:DbSecret-456@postgres:5432/mlflow",
    }
    entrypoint = ["bash", str(REPO / "docker" / "entrypoint.sh"), "python", "-c", "print('ok')"]
    held = _private_files_written(tmp_path, entrypoint, env, ["AdminSecret-123", "DbSecret-456"])
    assert held == [ini], held  # the MLflow ini only: Airflow's logins live in its database (FAB)

    out = tmp_path / "s3" / "s3.json"
    out.parent.mkdir()
    (out.parent / "s3.json.tmp").write_text("stale")
    (out.parent / "s3.json.tmp").chmod(0o666)
    keys = {f"S3_{role}_{kind}_KEY": f"{role}{kind}-{uuid.uuid4().hex[:8]}" for role in ("ADMIN", "WORKER", "MLFLOW")
            for kind in ("ACCESS", "SECRET")}  # fmt: skip
    job = [sys.executable, str(REPO / "docker" / "s3_identities.py"), "s3://lake/x", "s3://mlflow/y", "--out", str(out)]
    assert _private_files_written(tmp_path / "s3", job, {**os.environ, **keys}, list(keys.values())) == [out]


def test_mlflow_requires_a_login_and_the_tasks_have_their_own():
    mlflow = as_argv(services()["mlflow"]["command"])
    assert mlflow[mlflow.index("--app-name") + 1] == "basic-auth"
    env = env_of("mlflow")
    assert env["MLFLOW_AUTH_DEFAULT_PERMISSION"] in ("READ", "NO_PERMISSIONS"), "logged-in users must not write"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] and env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    store = mlflow[mlflow.index("--backend-store-uri") + 1]
    assert env["MLFLOW_AUTH_DATABASE_URI"] == store, "users and grants live in MLflow's own database"
    init = env_of("mlflow-init")
    worker = env_of("airflow-worker")
    assert init["MLFLOW_WORKER_USER"] == worker["MLFLOW_TRACKING_USERNAME"] != env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert init["MLFLOW_ADMIN_USER"] == env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert services()["mlflow-init"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # The basic-auth app imports Flask-WTF (mlflow's `auth` extra): the image that runs MLflow must install it.
    dockerfile = (REPO / "docker" / "airflow.Dockerfile").read_text().replace("\\\n", " ")
    lock = (REPO / "requirements.lock").read_text().lower()
    assert re.search(r"^RUN pip install .*Flask-WTF==", dockerfile, flags=re.M | re.I) or "flask-wtf==" in lock


def test_entrypoint_writes_an_auth_config_mlflow_reads(tmp_path):
    ini = tmp_path / "auth" / "basic_auth.ini"
    env = {
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_DATABASE_URI": "postgresql+psycopg2://mlflow:pa%25ss@postgres:5432/mlflow",
        "MLFLOW_AUTH_DEFAULT_PERMISSION": "NO_PERMISSIONS",
        "MLFLOW_AUTH_ADMIN_USERNAME": "root",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password",
    }
    # MLflow's own reader, loaded by path: importing the mlflow.server.auth package would need Flask-WTF.
    read = (
        "import importlib.util, pathlib, mlflow\n"
        "path = pathlib.Path(mlflow.__file__).parent / 'server' / 'auth' / 'config.py'\n"
        "spec = importlib.util.spec_from_file_location('auth_config', path)\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); c = m.read_auth_config()\n"
        "print(c.default_permission, c.database_uri, c.admin_username, c.admin_password)"
    )
    proc = subprocess.run(
        ["bash", str(REPO / "docker" / "entrypoint.sh"), "python", "-c", read], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [
        "NO_PERMISSIONS",
        "postgresql+psycopg2://mlflow:pa%25ss@postgres:5432/mlflow",
        "root",
        "a-long-admin-password",
    ]
    assert oct(ini.stat().st_mode & 0o777) == "0o600"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bundled_mlflow_refuses_anonymous_requests_and_lets_only_owners_write(tmp_path):
    """The mlflow service's command line, through docker/entrypoint.sh, on SQLite: anonymous -> 401; the tasks' user
    (created by docker/create_mlflow_user.py, as mlflow-init does) creates and changes its registered model; another
    logged-in user can read it but cannot move `champion`; only the admin creates users."""
    pytest.importorskip("flask_wtf", reason="Flask-WTF (mlflow[auth]) not installed here; the image installs it")
    import requests

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    admin = ("admin", "admin-password-long")
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path}/auth.db",
        "MLFLOW_AUTH_DEFAULT_PERMISSION": env_of("mlflow")["MLFLOW_AUTH_DEFAULT_PERMISSION"],
        "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-secret-for-the-test",
        "DEALREC_REQUIRED_SECRETS": "MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY",
    }
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    argv = as_argv(services()["mlflow"]["command"])
    argv[argv.index("--backend-store-uri") + 1] = f"sqlite:///{tmp_path}/mlflow.db"
    argv[argv.index("--artifacts-destination") + 1] = str(tmp_path / "artifacts")
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(port)
    argv += ["--workers", "1"]
    log = open(tmp_path / "mlflow.log", "w")  # noqa: SIM115 (closed in the finally below, after the server)
    server = subprocess.Popen(
        ["bash", str(REPO / "docker" / "entrypoint.sh"), *argv],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        init_env = {**env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ADMIN_USER": admin[0], "MLFLOW_ADMIN_PASSWORD": admin[1]}
        init_env |= {"MLFLOW_WORKER_USER": "dealrec", "MLFLOW_WORKER_PASSWORD": "tasks-password-long"}
        job = [sys.executable, str(REPO / "docker" / "create_mlflow_user.py"), "--wait", "180"]
        first = subprocess.run(job, env=init_env, capture_output=True, text=True, timeout=240)
        assert first.returncode == 0, first.stderr + (tmp_path / "mlflow.log").read_text()[-3000:]
        assert first.stdout.strip() == "MLflow user 'dealrec' created"
        again = subprocess.run(job, env=init_env, capture_output=True, text=True, timeout=240)
        assert again.stdout.strip() == "MLflow user 'dealrec' updated", again.stderr

        tasks = ("dealrec", "tasks-password-long")
        api = f"{uri}/api/2.0/mlflow"
        assert requests.get(f"{api}/experiments/search", params={"max_results": 1}, timeout=60).status_code == 401
        assert (
            requests.get(
                f"{api}/experiments/search", params={"max_results": 1}, auth=("dealrec", "wrong-password!"), timeout=60
            ).status_code
            == 401
        )
        made = requests.post(f"{api}/registered-models/create", json={"name": "dealrec-bigrec"}, auth=tasks, timeout=60)
        assert made.status_code == 200, made.text
        tag = {"name": "dealrec-bigrec", "key": "k", "value": "v"}
        assert requests.post(f"{api}/registered-models/set-tag", json=tag, auth=tasks, timeout=60).status_code == 200
        other = subprocess.run(
            job,
            env={**init_env, "MLFLOW_WORKER_USER": "viewer", "MLFLOW_WORKER_PASSWORD": "viewer-password-long"},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert other.returncode == 0, other.stderr
        viewer = ("viewer", "viewer-password-long")
        got = requests.get(f"{api}/registered-models/get", params={"name": "dealrec-bigrec"}, auth=viewer, timeout=60)
        assert got.status_code == 200, got.text
        alias = {"name": "dealrec-bigrec", "alias": "champion", "version": "1"}
        assert requests.post(f"{api}/registered-models/alias", json=alias, auth=viewer, timeout=60).status_code == 403
        assert requests.post(f"{api}/registered-models/set-tag", json=tag, auth=viewer, timeout=60).status_code == 403
        new_user = {"username": "intruder", "password": "intruder-password"}
        assert requests.post(f"{api}/users/create", json=new_user, auth=tasks, timeout=60).status_code == 403
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait(timeout=30)
        log.close()
