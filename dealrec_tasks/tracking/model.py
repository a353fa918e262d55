"""The fine-tuned recommender as an MLflow pyfunc: LoRA adapter files + the base model's path and fingerprint.

Why not ``mlflow.transformers.log_model``: for a PEFT model on a local base directory it saves the whole base
anyway (a 7B copy per version), and loading it back re-initialises the base q_proj/v_proj weights, so the logits
change (../shared/NOTES.md). Here a version holds only the adapter (kilobytes to megabytes); loading builds the
base from its directory with the one loading path of the project (``llm.tiny.load``) and applies the adapter with
``PeftModel.from_pretrained``, exactly as fine-tuning and evaluation do. The fingerprint guards against a base
directory that changed since training; ``model_config={"base_model": ...}`` at load time points at another copy.

``predict`` takes histories (lists of item titles) or ready prompts and returns the generated titles.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from dealrec_tasks.errors import InputError

ADAPTER_ARTIFACT = "adapter"
MODEL_ARTIFACT_PATH = "model"
# "Models from code": the version stores this text, not a pickle of our class (nothing executes on unpickling,
# and a refactor of the class does not break old versions as long as the import path stays).
MODEL_CODE = """\"\"\"MLflow entry point of a dealrec BIGRec version (needs the dealrec-tasks package).\"\"\"

import mlflow

from dealrec_tasks.tracking.model import BigRecAdapterModel

mlflow.models.set_model(BigRecAdapterModel())
"""


class BigRecAdapterModel(mlflow.pyfunc.PythonModel):
    """BIGRec: prompt with the user's history titles -> beam-searched next item title."""

    def load_context(self, context) -> None:
        from peft import PeftModel

        from dealrec_tasks.llm.evaluate import model_fingerprint
        from dealrec_tasks.llm.tiny import load

        conf = dict(context.model_config or {})
        base = Path(conf["base_model"])
        if not (base / "config.json").exists():
            raise InputError(
                f"base model {base}: no config.json there; this version needs its base model directory "
                "(load with model_config={'base_model': '<dir>'} to point at another copy)"
            )
        want = conf.get("base_model_fingerprint")
        if want and conf.get("check_fingerprint", True):
            got = model_fingerprint(base)
            if got != want:
                raise InputError(
                    f"base model {base}: fingerprint {got} differs from {want}, the base this adapter was trained "
                    "on; load the right base, or pass model_config={'check_fingerprint': False} to load anyway"
                )
        self.tokenizer, base_model = load(base)
        self.model = PeftModel.from_pretrained(base_model, context.artifacts[ADAPTER_ARTIFACT])
        self.model.eval()
        self.conf = conf

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        """``model_input``: a DataFrame with a ``history`` column (list of titles, oldest first) or a ``prompt``
        column (full prompt text); also a list of histories. Returns one generated title per row."""
        from dealrec_tasks.llm.config import EvalConfig
        from dealrec_tasks.llm.evaluate import generate_titles
        from dealrec_tasks.llm.prompts import EncodedPrompt, PromptTemplate, encode

        conf, params = self.conf, dict(params or {})
        cfg = EvalConfig(
            num_beams=int(params.get("num_beams", conf["num_beams"])),
            max_new_tokens=int(params.get("max_new_tokens", conf["max_new_tokens"])),
            # Versions registered before the limit existed generated without it.
            ngram_repeat_limit=int(params.get("ngram_repeat_limit", conf.get("ngram_repeat_limit", 0))),
            batch_size=int(conf["batch_size"]),
            cutoff_len=int(conf["cutoff_len"]),
            domain=conf["domain"],
        )
        rows = _rows(model_input)
        prompts = []
        for row in rows:
            if row.get("history") is not None:
                history = [str(t) for t in list(row["history"])]
                prompts.append(encode(self.tokenizer, PromptTemplate(cfg.domain), history, None, cfg.cutoff_len))
            elif row.get("prompt") is not None:
                ids = self.tokenizer(str(row["prompt"]), add_special_tokens=False)["input_ids"]
                bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
                prompts.append(EncodedPrompt([], bos + ids[-(cfg.cutoff_len - len(bos)) :], 0))
            else:
                raise InputError("predict: every row needs a 'history' (list of titles) or a 'prompt' (text)")
        return generate_titles(self.model, self.tokenizer, prompts, cfg) if prompts else []


def _rows(model_input) -> list[dict[str, Any]]:
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict("records")
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input).to_dict("records")
    if isinstance(model_input, list):
        return [r if isinstance(r, dict) else {"history": r} for r in model_input]
    raise InputError(
        f"predict: expected a DataFrame, a dict of columns or a list of histories, not {type(model_input)}"
    )


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema(
        [ColSpec(Array(DataType.string), "history", required=False), ColSpec(DataType.string, "prompt", required=False)]
    )
    outputs = Schema([ColSpec(DataType.string)])
    params = ParamSchema([ParamSpec("num_beams", DataType.long, 4), ParamSpec("max_new_tokens", DataType.long, 48)])
    return ModelSignature(inputs, outputs, params)


def pip_requirements() -> list[str]:
    """Pinned explicitly: inferring them imports torchvision, which breaks beside the local torch (NOTES.md)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("dealrec-tasks", "mlflow", "torch", "transformers", "peft", "tokenizers", "cloudpickle", "pandas"):
        try:
            out.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def save_adapter_model(out_dir: str | Path, adapter_dir: str | Path, model_config: dict[str, Any]) -> Path:
    """Write the pyfunc model folder (adapter files only, no base weights) to ``out_dir/model``."""
    path = Path(out_dir) / MODEL_ARTIFACT_PATH
    if path.exists():
        shutil.rmtree(path)
    code = Path(out_dir) / "bigrec_model.py"
    code.write_text(MODEL_CODE)
    with warnings.catch_warnings():
        # No input example on purpose: validating one would load the (possibly 7B) base model at logging time.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(code),
            artifacts={ADAPTER_ARTIFACT: str(adapter_dir)},
            model_config=model_config,
            pip_requirements=pip_requirements(),
            signature=signature(),
        )
    return path


def load_pyfunc(model_uri: str, tracking_uri: str, base_model: str | None = None, dst: str | None = None):
    """Load a logged/registered version (``models:/name/3``, ``models:/name@champion``, ``runs:/id/model`` or a
    folder) as a pyfunc; ``base_model`` overrides the recorded base model directory."""
    import mlflow.artifacts

    from dealrec_tasks.tracking.client import Tracking
    from dealrec_tasks.tracking.config import TrackingConfig

    local = model_uri
    if "://" in model_uri or model_uri.startswith(("models:", "runs:")):
        tr = Tracking(TrackingConfig(tracking_uri=tracking_uri))
        source = resolve_model_uri(tr, model_uri)
        local = tr.call(
            f"download {source}",
            mlflow.artifacts.download_artifacts,
            artifact_uri=source,
            dst_path=dst or tempfile.mkdtemp(prefix="dealrec-model-"),
            tracking_uri=tr.uri,
        )
    overrides = {"base_model": str(Path(base_model).resolve())} if base_model else None
    return mlflow.pyfunc.load_model(local, model_config=overrides)


def resolve_model_uri(tr, model_uri: str) -> str:
    """``models:/name/3`` or ``models:/name@alias`` -> the version's artifact location, looked up in ``tr``'s
    registry (MLflow's own resolution of models:/ falls back to the process-wide registry URI)."""
    from dealrec_tasks.tracking import registry as reg

    if not model_uri.startswith("models:/"):
        return model_uri
    rest = model_uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        mv = reg.alias_version(tr, name, alias)
        if mv is None:
            reg.require_registered_model(tr, name)
            raise InputError(f"{model_uri}: registered model {name!r} has no alias {alias!r}")
    else:
        name, _, version = rest.rpartition("/")
        mv = reg.get_version(tr, name, version)
    return mv.source


def load_torch_model(model_uri: str, tracking_uri: str, base_model: str | None = None):
    """(tokenizer, PeftModel) behind a logged version: what the logits test compares with the trained model."""
    inner = load_pyfunc(model_uri, tracking_uri, base_model).unwrap_python_model()
    return inner.tokenizer, inner.model
