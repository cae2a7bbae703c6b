# MLflow tracking server with basic auth, PostgreSQL (psycopg2) and S3 (boto3) clients.
#
#   buildah bud -f docker/mlflow.Dockerfile -t curvlab-mlflow:0.1.0 .
ARG PYTHON_IMAGE=python
ARG PYTHON_TAG=3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE}:${PYTHON_TAG} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

COPY docker/requirements-mlflow.txt /tmp/requirements-mlflow.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements-mlflow.txt

FROM ${PYTHON_IMAGE}:${PYTHON_TAG} AS runtime

RUN groupadd --gid 10001 mlflow \
    && useradd --uid 10001 --gid 10001 --home-dir /home/mlflow --create-home \
        --shell /usr/sbin/nologin mlflow

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/mlflow

WORKDIR /home/mlflow

USER 10001:10001

EXPOSE 5000

# /health needs no login and is exempt from the allowed-hosts check; the image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]

ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
