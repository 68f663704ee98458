# One image for every dme service (the command picks the service). Used by compose.yaml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin dme

FROM python:3.11-slim-bookworm
# ONNX Runtime's shared library comes from the PyPI wheel, as on a development machine.
RUN pip install --no-cache-dir onnxruntime==1.31.1
ENV ORT_DYLIB_PATH=/usr/local/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1
COPY --from=build /src/target/release/dme /usr/local/bin/dme
ENTRYPOINT ["dme"]
