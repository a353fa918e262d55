# syntax=docker/dockerfile:1
# The GPU Celery worker: the same Airflow base and pinned set as airflow.Dockerfile, but torch is the CUDA build
# (its wheels bring the CUDA runtime; the host needs only the NVIDIA driver and the NVIDIA Container Toolkit).
# It runs `airflow celery worker -q gpu` (docker-compose.yaml, service airflow-worker-gpu).
#   docker build -f docker/gpu-worker.Dockerfile -t dealrec/gpu-worker .
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

# Same torch version as requirements.lock, CUDA build: pick the index that matches the host driver
# (cu126 needs driver >= 560, cu128 >= 570; see pytorch.org "Get started").
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu128

USER airflow
COPY --chown=airflow:0 requirements.lock pyproject.toml README.md /opt/dealrec/
RUN pip install --no-cache-dir --index-url "${TORCH_CUDA_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && grep -v '^torch==' /opt/dealrec/requirements.lock > /tmp/requirements-no-torch.txt \
 && pip install --no-cache-dir -r /tmp/requirements-no-torch.txt "torch==${TORCH_VERSION}" \
 && python -c "import torch; assert '+cpu' not in torch.__version__, torch.__version__"
COPY --chown=airflow:0 dealrec_tasks /opt/dealrec/dealrec_tasks
RUN pip install --no-cache-dir --no-deps /opt/dealrec

COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
COPY --chown=airflow:0 docker/entrypoint.sh docker/check_secrets.py docker/create_buckets.py docker/s3_identities.py docker/create_mlflow_user.py docker/create_airflow_users.py /opt/dealrec/

ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DEALREC_PROGRESS=0 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/dealrec/entrypoint.sh"]
CMD ["celery", "worker", "-q", "gpu"]
