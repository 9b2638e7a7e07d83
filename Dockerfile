# syntax=docker/dockerfile:1
# Build: the whole toolchain; run: a slim image with the binary, as a non-root user.
FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
# A member of the workspace: Cargo reads its manifest even to build the server alone.
COPY bench/Cargo.toml bench/Cargo.toml
COPY bench/src bench/src
RUN cargo build --release --locked --bin snapshotd

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/snapshotd --create-home snapshotd
COPY --from=build /src/target/release/snapshotd /usr/local/bin/snapshotd
USER snapshotd
WORKDIR /var/lib/snapshotd
ENV SNAPSHOTD_LISTEN=0.0.0.0:50051 \
    SNAPSHOTD_METRICS_LISTEN=0.0.0.0:9464 \
    SNAPSHOTD_LOG_FORMAT=json
# gRPC, and Prometheus metrics at /metrics.
EXPOSE 50051 9464
# SIGTERM drains (SNAPSHOTD_SHUTDOWN_GRACE, 20 s): give `docker stop` longer than that (-t 30).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s --retries=3 \
    CMD ["snapshotd", "health"]
ENTRYPOINT ["snapshotd"]
