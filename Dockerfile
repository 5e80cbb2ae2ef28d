# One image for the cloud replicas and the simulated fleet.
# Build: docker build -t tandemrec .   (the bundle comes from `tandem pipeline`, mounted at run time)
FROM python:3.11-slim
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY tandem_contract ./tandem_contract
COPY tandemrec ./tandemrec
COPY cloud_service ./cloud_service
COPY edge_client ./edge_client
COPY tandem_wire ./tandem_wire
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        "torch==2.13.0" && pip install --no-cache-dir -e ".[edge,cloud,train]"
ENV TANDEM_CLOUD_HOST=0.0.0.0 \
    TANDEM_ARTIFACTS_DIR=/artifacts
EXPOSE 8000 50051
USER nobody
CMD ["tandem", "serve"]
