# The EdgeLoop image: every service and the `edgeloop` command in one image
# (the Helm chart runs it with `args: [<service>]`). Per-service images, built
# the same way with only one service installed, are in services/*/Dockerfile.
# Two stages on a pinned base (a Python patch release on a Debian release; override with --build-arg PYTHON_IMAGE):
# the build stage installs under /install, the image keeps only what was installed and runs as uid/gid 10001.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints.txt ./
COPY libs ./libs
COPY services ./services
COPY apps ./apps
RUN pip install --prefix=/install -c constraints.txt ./libs/common ./services/* ./apps/edgeloop \
    && pip install --prefix=/install --no-deps -c constraints.txt flwr

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 edgeloop && mkdir -p /var/lib/edgeloop && chown edgeloop /var/lib/edgeloop
USER 10001:10001
ENV EDGELOOP_DATA_DIR=/var/lib/edgeloop
ENTRYPOINT ["edgeloop"]
