# The operator's image: `make docker-build` (IMAGE=...). Two stages: the first installs
# cloudcred and all its dependencies (provider extras included) into a virtualenv; the
# final stage is the same Python base with that virtualenv only (no compiler, no pip, no
# wheels, no sources), running as the non-root UID 10001.
#
# Supply chain: the base image is pinned by digest (a multi-arch index: linux/amd64 and
# linux/arm64); every Python package comes from requirements/image.txt, pinned with its
# hashes (`make lock` writes it), installed with --require-hashes --no-deps and as
# wheels only, so nothing unpinned or unhashed is fetched and nothing is compiled. Only
# cloudcred itself is built here, with the hash-pinned setuptools of
# requirements/image-build.txt. A newer base: `docker buildx imagetools inspect
# python:3.11-slim-bookworm` prints the index digest to put here.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:b18992999dbe963a45a8a4da40ac2b1975be1a776d939d098c647482bcad5cba

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/image.txt requirements/image-build.txt ./requirements/
# A virtualenv without pip; the builder's pip installs into it, byte-compiling every
# module now (the root file system is read-only at run time).
RUN pip install --require-hashes --no-deps --only-binary=:all: -r requirements/image-build.txt \
 && python -m venv --without-pip /opt/cloudcred \
 && pip --python /opt/cloudcred/bin/python install --require-hashes --no-deps \
      --only-binary=:all: -r requirements/image.txt
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && pip --python /opt/cloudcred/bin/python install --no-deps --no-index /wheels/cloudcred-*.whl \
 && pip --python /opt/cloudcred/bin/python check \
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
