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
)
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
# Third-party images: the program their command or health check must start (their CLIs are not installed here).
THIRD_PARTY_PROGRAMS = {"postgres": {"pg_isready"}, "redis": {"redis-server", "redis-cli"}, "s3": {"weed", "wget"}}


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
    """S3 and MLflow have no login of their own: by default nothing is reachable from other hosts (issue 14, 12)."""
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
    for name in ("AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
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
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"

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
        assert (e["AWS_ACCESS_KEY_ID"], e["AWS_SECRET_ACCESS_KEY"]) == (
            env["AWS_ACCESS_KEY_ID"],
            env["AWS_SECRET_ACCESS_KEY"],
        ), svc
    s3_env = env_of("s3")
    assert (s3_env["S3_ACCESS_KEY"], s3_env["S3_SECRET_KEY"]) == (
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
    )


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


def test_entrypoint_writes_the_login_and_runs_our_programs_directly(tmp_path):
    passwords = tmp_path / "home" / "passwords.json"
    env = {
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "AIRFLOW_ADMIN_USER": "alice",
        "AIRFLOW_ADMIN_PASSWORD": "s3cret",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    proc = subprocess.run(
        ["bash", str(REPO / "docker" / "entrypoint.sh"), "python", "-c", "print('ran directly')"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ran directly"
    # Read back by the auth manager itself (in a child: importing Airflow here would set up an AIRFLOW_HOME).
    read = (
        "import sys\n"
        "from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager as M\n"
        "print(M._get_passwords(stream=open(sys.argv[1])))"
    )
    child_env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    out = subprocess.run([sys.executable, "-c", read, str(passwords)], env=child_env, capture_output=True, text=True)
    assert out.stdout.strip() == str({"alice": "s3cret"}), out.stderr[-2000:]
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
