# syntax=docker/dockerfile:1
# The Airflow image of the stack: the official apache/airflow image plus this package, its pinned dependency set
# (requirements.lock, torch's CPU build) and the DAGs. Every Airflow service, the CPU Celery worker and the MLflow
# server run from it. Build from the repository root: docker compose build (or
#   docker build -f docker/airflow.Dockerfile -t dealrec/airflow .)
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

# torch in requirements.lock is the +cpu build, published on PyTorch's CPU index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

USER airflow
COPY --chown=airflow:0 requirements.lock pyproject.toml README.md /opt/dealrec/
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -r /opt/dealrec/requirements.lock
COPY --chown=airflow:0 dealrec_tasks /opt/dealrec/dealrec_tasks
RUN pip install --no-cache-dir --no-deps /opt/dealrec

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 docker/entrypoint.sh docker/check_secrets.py docker/create_buckets.py docker/s3_identities.py docker/create_mlflow_user.py docker/create_airflow_users.py /opt/dealrec/

# Models are local Hugging Face directories mounted from the host: never reach for a hub.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DEALREC_PROGRESS=0

ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/dealrec/entrypoint.sh"]
CMD ["version"]
