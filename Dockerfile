# penny-scheduler image: kube-scheduler with Penny's plugins, static, non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/penny-scheduler ./cmd/penny-scheduler

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/penny-scheduler /usr/local/bin/penny-scheduler
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/penny-scheduler"]
