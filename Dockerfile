# The EdgeLoop image: every service and the `edgeloop` command in one image
# (the Helm chart runs it with `args: [<service>]`). Per-service images, built
# the same way with only one service installed, are in services/*/Dockerfile.
FROM python:3.11-slim
WORKDIR /src
COPY constraints.txt ./
COPY libs ./libs
COPY services ./services
COPY apps ./apps
RUN pip install --no-cache-dir -c constraints.txt ./libs/common ./services/* ./apps/edgeloop \
    && useradd --system --uid 10001 edgeloop && mkdir -p /var/lib/edgeloop && chown edgeloop /var/lib/edgeloop
USER edgeloop
ENV EDGELOOP_DATA_DIR=/var/lib/edgeloop
ENTRYPOINT ["edgeloop"]
