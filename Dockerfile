# syntax=docker/dockerfile:1
# Static, non-root image for credential-webhook. Build: docker build -t credential-webhook .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# A static binary (no cgo) runs on the distroless static base, which has no libc.
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" -o /out/credential-webhook .

# distroless/static: CA certificates, tzdata, /etc/passwd with the nonroot user, and nothing else
# (no shell, no package manager).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/credential-webhook /credential-webhook
# 65532 is distroless' "nonroot"; numeric so runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/credential-webhook"]
CMD ["serve", "--listen=:8443", "--tls-cert-file=/etc/credential-webhook/tls/tls.crt", "--tls-key-file=/etc/credential-webhook/tls/tls.key"]
