# syntax=docker/dockerfile:1
# Build: the whole toolchain; run: a slim image with the binary, as a non-root user.
FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
RUN cargo build --release --locked --bin snapshotd

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/snapshotd --create-home snapshotd
COPY --from=build /src/target/release/snapshotd /usr/local/bin/snapshotd
USER snapshotd
WORKDIR /var/lib/snapshotd
ENV SNAPSHOTD_LISTEN=0.0.0.0:50051 \
    SNAPSHOTD_LOG_FORMAT=json
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s --retries=3 \
    CMD ["snapshotd", "health"]
ENTRYPOINT ["snapshotd"]
