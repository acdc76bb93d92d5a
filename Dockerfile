# The oauth2_upstream sidecar: Caddy with its standard modules and this one (cmd/caddy), a
# static binary on a distroless base, running as a non-root user.
#
#   docker build -t caddy-oauth2-upstream .
#
# k8s/dockerfile_test.go parses this file and runs the builder's go build command here.

FROM golang:1.26 AS builder
WORKDIR /src
# Dependencies first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static (no cgo, so no libc to load) and reproducible (no local paths in the binary).
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/caddy ./cmd/caddy
# Distroless has no shell to create directories: /data (Caddy's data directory and the file
# keystore) is made here, owned by the runtime user, so a volume mounted there inherits it.
# So is /run/oauth2-upstream, where the Caddyfile puts the admin API's unix socket (Kubernetes
# mounts an emptyDir there that only the sidecar container sees).
# They are copied as entries of rootfs/, which keeps their owner and mode (copying a directory
# itself would copy only its contents).
RUN mkdir -p /out/rootfs/data /out/rootfs/run/oauth2-upstream && \
    chown 65532:65532 /out/rootfs/data /out/rootfs/run/oauth2-upstream && \
    chmod 0700 /out/rootfs/data /out/rootfs/run/oauth2-upstream

FROM gcr.io/distroless/static-debian12:nonroot
# CA certificates for the token endpoint and the upstream API come with the base image.
COPY --from=builder /out/caddy /usr/bin/caddy
COPY --from=builder --chown=65532:65532 /out/rootfs/ /
# The Kubernetes base's Caddyfile is the image's default; see its comments for the
# environment it reads. Mount another at /etc/caddy/Caddyfile to change it.
COPY k8s/base/Caddyfile /etc/caddy/Caddyfile
# Caddy keeps its data under $XDG_DATA_HOME/caddy; its config directory is unused
# (persist_config off), as the root filesystem may be read-only.
ENV XDG_DATA_HOME=/data
USER 65532:65532
# The proxy (127.0.0.1 unless PROXY_BIND says otherwise) and the health endpoint.
EXPOSE 8080 8081
ENTRYPOINT ["/usr/bin/caddy"]
CMD ["run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
