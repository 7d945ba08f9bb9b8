# The example worker (examples/orders) as a small image. Multi-stage: build with the Rust
# toolchain, run on Debian slim as a non-root user. The worker is PID 1 via the exec-form
# ENTRYPOINT, so `docker stop`'s SIGTERM reaches it and triggers a graceful shutdown
# (in-flight jobs finish, unstarted ones go back to the broker, telemetry is flushed).
#
#   docker build -t longshore-orders .
#   docker run --rm -e LONGSHORE_URL=amqp://guest:guest@host.docker.internal:5672/%2f longshore-orders
#
# The same image runs the producer (--entrypoint orders-producer) and the `longshore`
# command (--entrypoint longshore).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# aws-lc-sys builds with gcc alone; no other system packages are needed.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p longshore-example-orders -p longshore-cli --bins \
    && mkdir -p /out \
    && cp target/release/orders-worker target/release/orders-producer target/release/longshore /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin longshore
COPY --from=build /out/orders-worker /out/orders-producer /out/longshore /usr/local/bin/
USER 10001:10001
ENV LONGSHORE_HEALTH_ADDR=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/orders-worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/orders-worker"]
