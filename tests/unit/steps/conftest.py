"""The LLM fixtures (a tiny LLaMA built from synthetic titles) for the LLM steps' tests."""

from tests.unit.llm.conftest import tiny_dir, titles  # noqa: F401 - fixtures
