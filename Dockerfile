# syntax=docker/dockerfile:1
#
# dap-server and dap-runner images (multi-stage; the build stage is shared).
#
#   docker build --target server -t dap-server .
#   docker build --target runner -t dap-runner .
#
#   docker run -d --name dap -p 8080:8080 -v dap-data:/var/lib/dap dap-server
#   docker exec dap dap-server apikey create --name admin --scope admin
#   docker run -d --name runner -v /srv/data:/data:ro -v runner-state:/var/lib/dap-runner \
#     -e DAP_SERVER=https://dap.example.com -e DAP_RUNNER_TOKEN=dapr_… \
#     dap-runner --dataset sales=/data/sales.csv
#
# Both run as an unprivileged user, log JSON to stderr and keep state in a volume. TLS: give the
# server --tls-cert/--tls-key (mount them read-only) or put it behind nginx
# (docs/deploy-nginx.md); give the runner --ca-cert for a self-signed server.

ARG RUST_VERSION=1.95
ARG DEBIAN=trixie

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY . .
# Cache the registry and target dir between builds; copy the binaries out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dap-server -p dap-runner \
 && install -Dm755 target/release/dap-server target/release/dap-runner -t /out/

FROM debian:${DEBIAN}-slim AS base
# ca-certificates: webhook targets over https; curl: the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

FROM base AS runner
RUN useradd --system --uid 10002 --user-group --home-dir /var/lib/dap-runner --create-home dap-runner
COPY --from=build /out/dap-runner /usr/local/bin/dap-runner
ENV DAP_RUNNER_STATE_DIR=/var/lib/dap-runner \
    DAP_RUNNER_NO_PROGRESS=1
VOLUME ["/var/lib/dap-runner"]
USER dap-runner
# The runner serves nothing, so there is nothing to probe: it exits on a refused credential
# (code 3, do not restart) or bad configuration (code 2) and otherwise reconnects by itself.
HEALTHCHECK NONE
ENTRYPOINT ["dap-runner"]

FROM base AS server
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/dap --create-home dap
COPY --from=build /out/dap-server /usr/local/bin/dap-server
ENV DAP_DATA_DIR=/var/lib/dap \
    DAP_LISTEN=0.0.0.0:8080 \
    DAP_LOG_FORMAT=json \
    DAP_HEALTH_URL=http://127.0.0.1:8080/healthz
VOLUME ["/var/lib/dap"]
EXPOSE 8080
USER dap
# With --tls-cert set, point DAP_HEALTH_URL at https://127.0.0.1:8080/healthz (-k below skips
# verification for this local probe only, since the certificate names the public host).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsSk --max-time 2 "$DAP_HEALTH_URL" >/dev/null || exit 1
ENTRYPOINT ["dap-server"]
CMD ["serve"]
