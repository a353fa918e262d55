"""Start-up stays light: the CLI and the DAGs' Params import no torch (seconds per command, per DAG parse)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _torch_imported(code: str) -> bool:
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1] == "True"


def test_the_cli_imports_no_torch():
    assert not _torch_imported("import dealrec_tasks.cli")


def test_the_block_names_need_no_torch_and_the_model_uses_that_one_list():
    assert not _torch_imported("from dealrec_tasks.scoring.config import BLOCKS, InfluenceConfig")
    from dealrec_tasks.scoring import config
    from dealrec_tasks.surrogate import model

    assert model.BLOCKS is config.BLOCKS


def test_the_airflow_params_import_no_torch():
    assert not _torch_imported(
        "sys.path.insert(0, 'plugins')\n"
        "import dealrec_airflow\n"
        "dealrec_airflow.daily_params()\n"
        "dealrec_airflow.finetune_params()"
    )
