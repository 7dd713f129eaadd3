# The operator's image: `make docker-build` (IMAGE=...). Two stages: the first builds
# wheels of cloudcred and all its dependencies (provider extras included) and installs
# them into a virtualenv; the final stage is python:3.11-slim with that virtualenv only
# (no compiler, no pip, no wheels, no sources), running as the non-root UID 10001.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --wheel-dir /wheels '.[all]'
# A virtualenv without pip; the builder's pip installs into it, byte-compiling every
# module now (the root file system is read-only at run time).
RUN python -m venv --without-pip /opt/cloudcred \
 && pip --python /opt/cloudcred/bin/python install --no-index --find-links /wheels \
      'cloudcred[all]' \
 && /opt/cloudcred/bin/python -c 'import cloudcred, kopf, boto3, google.auth, azure.identity, scaleway'

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cloudcred" \
      org.opencontainers.image.description="Kubernetes operator for cloud-provider credentials" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 cloudcred \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cloudcred
COPY --from=builder /opt/cloudcred /opt/cloudcred
# HOME=/tmp: the only writable place in the pod (an emptyDir); libraries that look for a
# home folder find one.
ENV PATH=/opt/cloudcred/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
# 8080: kopf's liveness endpoint (/healthz); 9090: Prometheus metrics.
EXPOSE 8080 9090
ENTRYPOINT ["cloudcred"]
# All namespaces unless CLOUDCRED_NAMESPACES is set; see deploy/deployment.yaml.
CMD ["run", "--standalone"]
