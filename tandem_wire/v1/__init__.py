"""Generated gRPC/protobuf code for tandem.v1 (see scripts/gen_protos.py)."""
