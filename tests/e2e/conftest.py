"""The one Celery stack of the e2e tests (session-scoped: its start-up is paid once)."""

from tests.e2e.stack import stack  # noqa: F401
