# Build: docker build -t stepgate .
# Run:   docker run -p 8081:8081 -e STEPGATE_SECRET_KEY=$(openssl rand -hex 32) stepgate
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config.yaml ./
RUN cargo build --release --locked --bin stepgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /nonexistent stepgate \
    && mkdir -p /var/lib/stepgate && chown stepgate /var/lib/stepgate
COPY --from=build /src/target/release/stepgate /usr/local/bin/stepgate
COPY config.yaml /etc/stepgate/config.yaml
COPY policies /etc/stepgate/policies
# The sample binds to loopback; containers listen on all interfaces. The sample secret is for
# trying only: pass STEPGATE_SECRET_KEY in production.
RUN sed -i 's/"127.0.0.1:\(80[0-9][0-9]\|9100\)"/"0.0.0.0:\1"/' /etc/stepgate/config.yaml
USER stepgate
# The working directory holds the `file` SMS gateway's outbox (sms-outbox.jsonl) when trying it.
WORKDIR /var/lib/stepgate
EXPOSE 8080 8081 9100
ENTRYPOINT ["stepgate"]
CMD ["run", "--config", "/etc/stepgate/config.yaml"]
