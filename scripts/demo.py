"""``make demo``: the whole pipeline through Airflow 3 on embedded defaults, in a few minutes on a laptop CPU.

1. bootstrap Airflow's state under ``var/airflow`` (SQLite, this repo's dags/ and plugins/, no examples, the
   ``gpu`` pool), once;
2. synthetic logs for the 7 days up to yesterday (every day also gets a second file with rows that break the
   contract); the runs are dated now, the day they cover is the ``dt`` Param;
3. ``airflow dags test dealrec_daily -c '{"dt": <yesterday>, ...}'``: ingest (catching up every day), samples,
   compact (the week's deltas into a snapshot), surrogate, influence and effort in 2 shards each, the coreset, its
   MLflow run, the coreset asset;
4. ``airflow dags test dealrec_finetune``: LoRA fine-tuning on each arm's coreset (the dealrec one and its random
   control), evaluation on the same users, a registered MLflow version per arm, the best promoted to ``champion``
   when it beats the current one on those users (the gate);
5. where everything is, and how to open the Airflow and MLflow UIs on it.

Each task runs in this process tree, in order (``airflow dags test`` needs no scheduler or worker). The demo's
small sizes are Params (``-c``) and environment variables, not code paths: the DAGs are the production ones.
Running it again reuses everything that did not change (published partitions are no-ops, MLflow finds its runs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dealrec_tasks.llm.shipped import SHIPPED_DIR

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEP_LINE = re.compile(
    r"^(dealrec_daily|dealrec_finetune|ingest|compact|samples|surrogate|influence-solve|influence|merge-influence|tiny-llm|"
    r"effort|merge-effort|select|track-pruning|finetune|evaluate|register|evaluate-champion|gate): "
)
DAILY_CONF = {"ratio": 0.05, "shards": 2}
FINETUNE_CONF = {"epochs": 2, "eval_users": 200}
DAYS = 7


def settings(var: Path, lake: str) -> dict[str, str]:
    """Environment of every command: Airflow's state and the pipeline's locations, all under ``var``."""
    home = var / "airflow"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "DEALREC_LAKE": lake,
        "DEALREC_MODEL_DIR": str(var / "models"),
        "DEALREC_WORK_DIR": str(var / "work"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{var / 'mlflow.db'}",
    }


# Secrets every Airflow process of one deployment must share. Left unset, each process draws its own: the
# scheduler signs a task's token with one JWT secret and the api-server checks it with another ("Signature
# verification failed"), so every scheduled task fails with an empty log (issue 29, item 14).
SHARED_SECRETS = {("api_auth", "jwt_secret"): 32, ("api", "secret_key"): 32}


def write_airflow_cfg(env: dict[str, str]) -> None:
    """The same settings in ``airflow.cfg``, so that ``AIRFLOW_HOME=var/airflow airflow standalone`` alone works.

    Settings already in the file are kept (a rerun keeps its secrets); missing ones are added. The file holds
    secrets: written atomically, readable by its owner only.
    """
    import configparser
    import secrets

    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    path = home / "airflow.cfg"
    cfg = configparser.ConfigParser(interpolation=None)
    if path.exists():
        cfg.read(path)
    wanted = {
        ("core", "dags_folder"): env["AIRFLOW__CORE__DAGS_FOLDER"],
        ("core", "plugins_folder"): env["AIRFLOW__CORE__PLUGINS_FOLDER"],
        ("core", "load_examples"): "False",
        ("database", "sql_alchemy_conn"): env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
    }
    wanted |= {key: secrets.token_urlsafe(size) for key, size in SHARED_SECRETS.items()}
    for (section, option), value in wanted.items():
        if not cfg.has_section(section):
            cfg.add_section(section)
        if not cfg.get(section, option, fallback=""):
            cfg.set(section, option, value)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        cfg.write(f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def run(cmd: list[str], env: dict[str, str], log: Path, show=STEP_LINE) -> None:
    """Run ``cmd``, keep its whole output in ``log``, print the step summaries as they come; exit on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=os.environ | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
        )
        assert proc.stdout is not None
        for line in proc.stdout:  # text mode splits on \r too: progress bars become lines
            out.write(line)
            if show is not None and show.match(line):
                print("  " + line.rstrip()[:200], flush=True)
        code = proc.wait()
    if code != 0:
        tail = log.read_text().splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        sys.exit(
            f"demo: `{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}` failed ({code}); "
            f"whole output in {log}"
        )


def bootstrap(env: dict[str, str], logs: Path) -> None:
    """Migrate Airflow's SQLite database and create the ``gpu`` pool, once per Airflow version."""
    import airflow

    stamp = Path(env["AIRFLOW_HOME"]) / ".dealrec-bootstrapped"
    if stamp.exists() and stamp.read_text() == airflow.__version__:
        return
    run([str(BIN / "airflow"), "db", "migrate"], env, logs / "db-migrate.log", show=None)
    pool = [str(BIN / "airflow"), "pools", "set", "gpu", "2", "GPU tasks (influence, effort, fine-tuning)"]
    run(pool, env, logs / "pools.log", show=None)
    stamp.write_text(airflow.__version__)


def champion(env: dict[str, str]) -> str:
    """``name version N (ndcg@20 ...)`` of the registered champion, read back from MLflow."""
    code = (
        "import mlflow, json\n"
        "c = mlflow.MlflowClient()\n"
        "v = c.get_model_version_by_alias('dealrec-bigrec', 'champion')\n"
        "print(json.dumps({'version': v.version, 'tags': v.tags}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=os.environ | env, capture_output=True, text=True)
    if proc.returncode != 0:
        return "no champion found (see the MLflow UI)"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    metric = out["tags"].get("eval.ndcg_at_20") or out["tags"].get("promotion.challenger_value", "?")
    return f"dealrec-bigrec version {out['version']} (alias champion, ndcg@20 {metric})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--var", default=str(REPO / "var"), help="state folder (default %(default)s)")
    parser.add_argument("--lake", default="", help="lake root (default <var>/lake)")
    args = parser.parse_args()
    started = time.perf_counter()
    var = Path(args.var).resolve()
    lake = args.lake or str(var / "lake")
    if "://" not in lake:
        lake = str(Path(lake).resolve())
    env = settings(var, lake)
    logs = Path(env["AIRFLOW_HOME"]) / "demo-logs"
    write_airflow_cfg(env)

    print(f"[1/4] Airflow state in {env['AIRFLOW_HOME']} (SQLite), DAGs from {REPO / 'dags'}", flush=True)
    bootstrap(env, logs)

    print("[2/4] Synthetic logs (7 days; 25 rows per day break the contract)", flush=True)
    # The 7 days end yesterday (UTC) and the runs are dated now, so Airflow's grid, calendar and durations read
    # as they would on a real deployment (fixed dates in the past showed a run "lasting" 326 days).
    start = (datetime.now(UTC).date() - timedelta(days=DAYS)).isoformat()
    synth = [str(BIN / "dealrec"), "--lake", lake, "--json", "synthetic", "--bad-rows", "25", "--start", start]
    synth += ["--days", str(DAYS)]
    run(synth, env, logs / "synthetic.log", show=None)
    result = next(json.loads(x) for x in (logs / "synthetic.log").read_text().splitlines() if x.startswith("{"))
    dt = result["counts"]["last_dt"]

    t0 = time.perf_counter()
    conf = {"dt": dt} | DAILY_CONF
    print(f"[3/4] airflow dags test dealrec_daily  -c '{json.dumps(conf)}'", flush=True)
    daily = [str(BIN / "airflow"), "dags", "test", "dealrec_daily", "-c", json.dumps(conf)]
    run(daily, env, logs / "dealrec_daily.log")
    print(f"      {time.perf_counter() - t0:.0f} s", flush=True)

    t0 = time.perf_counter()
    conf = {"dt": dt} | FINETUNE_CONF
    print(f"[4/4] airflow dags test dealrec_finetune  -c '{json.dumps(conf)}'", flush=True)
    run(
        [str(BIN / "airflow"), "dags", "test", "dealrec_finetune", "-c", json.dumps(conf)],
        env,
        logs / "dealrec_finetune.log",
    )
    print(f"      {time.perf_counter() - t0:.0f} s", flush=True)

    rel = lambda p: os.path.relpath(p, Path.cwd()) if "://" not in str(p) else str(p)  # noqa: E731
    part = lambda name: f"{rel(lake)}/{name}/dt={dt}"  # noqa: E731
    print(
        f"\nDone for dt={dt} in {time.perf_counter() - started:.0f} s. Look at:\n"
        f"  coreset      {part('coreset')}/coreset.parquet (+ report.png: the plots, _manifest.json)\n"
        f"  rejects      {part('rejects')}/rejects.parquet\n"
        f"  adapter      {part('adapters')}/ (base model: the shipped {rel(SHIPPED_DIR)})\n"
        f"  evaluation   {part('evaluation')}/metrics.json, per_user.parquet, examples.json\n"
        f"  control arm  {part('coreset/arm=random')}/ (adapters/ and evaluation/ likewise: arm=random/)\n"
        f"  gate         {part('gate')}/gate.json (the decision, dealrec vs random: paired per user), arms.png\n"
        f"  model        {champion(env)}\n"
        f"  task logs    {rel(logs)}/\n"
        "\nAirflow UI (the two runs, their task logs, the Params form; http://localhost:8080, user admin, password in "
        f"{rel(Path(env['AIRFLOW_HOME']) / 'simple_auth_manager_passwords.json.generated')}):\n"
        f"  PATH={BIN}:$PATH AIRFLOW_HOME={rel(env['AIRFLOW_HOME'])} DEALREC_LAKE={lake} "
        f"MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']} DEALREC_MLFLOW_UI_URL=http://localhost:5000 "
        "airflow standalone\n"
        "  (DAGs start paused; unpausing dealrec_daily schedules the run for yesterday, the demo's day: its scores are "
        "reused, the coreset is redone with the form's defaults)\n"
        "MLflow UI (pruning and fine-tuning runs, the registered model and its aliases; http://localhost:5000):\n"
        f"  {rel(BIN / 'mlflow')} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']} --port 5000\n"
        f"Day by day, what was kept and whether it helped (same numbers on the CLI: dealrec --lake {rel(lake)} days):\n"
        f"  DEALRec view  http://localhost:8080/plugin/dealrec  (menu DEALRec in the Airflow UI started above; "
        f"this day: http://localhost:8080/dealrec/day/{dt}/)"
    )


if __name__ == "__main__":
    main()
