"""The contract between the cloud, the device SDK and training: small, torch-free, numpy only.

What both sides of tandemrec must agree on lives here, and nothing else does:

- ``bundle``: bundle manifests and pairs (what training writes, the cloud loads and verifies,
  and devices download and verify);
- ``intents`` and ``request``: the collaborative request a device builds from its intent head
  (what leaves the device);
- ``fusion``: the last step of collaborative serving, shared by the SDK, offline evaluation and
  the simulator, so the figures a pipeline reports are the rankings a device serves;
- ``runtime``: the device model run with ONNX Runtime (imported lazily), shared by the SDK, the
  export check and offline evaluation.

This package imports no other package of the project (cloud_service, edge_client, tandemrec,
tandem_wire), and never torch, typer, rich or yaml: import-linter contracts in pyproject.toml
keep it so.
"""
