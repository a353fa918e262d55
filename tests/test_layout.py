"""Boundaries of the design: the library never imports Airflow; the top-level folders exist."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_library_never_imports_airflow():
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "dealrec_tasks").rglob("*.py")
        if any(line.lstrip().startswith(("import airflow", "from airflow")) for line in p.read_text().splitlines())
    ]
    assert offenders == []
    code = "import sys, pkgutil, importlib, dealrec_tasks\n"
    code += (
        "for m in pkgutil.walk_packages(dealrec_tasks.__path__, 'dealrec_tasks.'): importlib.import_module(m.name)\n"
    )
    code += "print(sorted(k for k in sys.modules if k == 'airflow' or k.startswith('airflow.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_design_folders_exist_with_a_purpose():
    for folder in ("dags", "plugins", "dealrec_tasks", "docker", "tests", "bench"):
        assert (REPO / folder).is_dir(), folder
        assert any((REPO / folder).iterdir()), f"{folder} is empty"
    assert (REPO / "docker-compose.yaml").is_file()
