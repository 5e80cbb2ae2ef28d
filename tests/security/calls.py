"""One call, either transport: the same request over gRPC or HTTP, answered as (code, body).

The security tests assert the same outcome on both transports, so they speak in gRPC status
code names ("OK", "PERMISSION_DENIED", ...) and in plain dicts whichever transport answered.
"""

from __future__ import annotations

from typing import Any

import grpc
import httpx
from google.protobuf.json_format import MessageToDict

from cloud_service.auth import make_token
from cloud_service.server import Running
from tandem_wire.v1 import recommend_pb2 as pb
from tandem_wire.v1 import recommend_pb2_grpc as pb_grpc

TRANSPORTS = ("grpc", "http")
SECRET = "security-token-secret-of-32-bytes+"


def token(device_id: str) -> dict[str, str]:
    """Headers of a device token minted for `device_id`."""
    return {"authorization": f"Bearer {make_token(SECRET, device_id)}"}


def app_key(key: str) -> dict[str, str]:
    return {"x-api-key": key}


class Caller:
    """Recommend and Publish against one replica over `transport`."""

    def __init__(self, replica: Running, transport: str) -> None:
        self.transport = transport
        self._channel = grpc.insecure_channel(f"127.0.0.1:{replica.grpc_port}")
        self._stub = pb_grpc.TandemServiceStub(self._channel)
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{replica.http_port}", timeout=60)

    def close(self) -> None:
        self._channel.close()
        self._http.close()

    def recommend(self, headers: dict[str, str], body: dict[str, Any]) -> tuple[str, dict]:
        if self.transport == "http":
            return _http_answer(self._http.post("/v1/recommend", json=body, headers=headers))
        return self._grpc(self._stub.Recommend, pb.RecommendRequest(**body), headers)

    def manifest(self, headers: dict[str, str], device_id: str) -> tuple[str, dict]:
        if self.transport == "http":
            return _http_answer(self._http.get("/v1/manifest", params={"device_id": device_id},
                                               headers=headers))
        return self._grpc(self._stub.GetManifest, pb.GetManifestRequest(device_id=device_id),
                          headers)

    def publish(self, headers: dict[str, str], bundle_dir: str,
                canary_share: float = 0.0) -> tuple[str, dict]:
        body = {"bundle_dir": bundle_dir, "canary_share": canary_share}
        if self.transport == "http":
            return _http_answer(self._http.post("/v1/admin/publish", json=body,
                                                headers=headers))
        return self._grpc(self._stub.Publish, pb.PublishRequest(**body), headers)

    @staticmethod
    def _grpc(method: Any, message: Any, headers: dict[str, str]) -> tuple[str, dict]:
        try:
            reply = method(message, metadata=tuple(headers.items()), timeout=60)
        except grpc.RpcError as exc:
            return exc.code().name, {"message": exc.details()}
        return "OK", MessageToDict(reply, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True)


def _http_answer(resp: httpx.Response) -> tuple[str, dict]:
    if resp.status_code == 200:
        return "OK", resp.json()
    return resp.json()["error"]["code"], {"message": resp.json()["error"]["message"],
                                          "status": resp.status_code}
