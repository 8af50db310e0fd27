# TTG images: one image with the three binaries (ttg-server, ttg-agent, ttgctl).
# Builds with nothing from the host but this source tree: the Rust toolchain
# comes from the build image, protoc from the protoc-bin-vendored crate.
#   docker build -t ttg:dev .        (or: make image)

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace \
 && install -D -m 0755 target/release/ttg-server target/release/ttg-agent target/release/ttgctl /out/

FROM debian:bookworm-slim
# ca-certificates: TLS to Redis (rediss://) and to OTLP backends with public roots.
# python3: for exec-kernel programs written in Python; drop it if you use none.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin ttg
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# gRPC, server metrics, agent metrics
EXPOSE 50051 9464 9465
ENTRYPOINT ["/usr/local/bin/ttg-server"]
