"""Checks reflection, health and an Invoke through dynamically loaded descriptors."""
import json
import sys
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

addr, token_file = sys.argv[1], sys.argv[2]
token = open(token_file).read().strip()
channel = grpc.insecure_channel(addr)
grpc.channel_ready_future(channel).result(timeout=10)

stub = reflection_pb2_grpc.ServerReflectionStub(channel)
def ask(req):
    return next(iter(stub.ServerReflectionInfo(iter([req]))))

services = [s.name for s in ask(reflection_pb2.ServerReflectionRequest(list_services="")).list_services_response.service]
print("reflection lists:", services)
for want in ["synapse.v1.Skills", "synapse.v1.Cluster", "synapse.v1.Clock", "synapse.v1.Capabilities", "grpc.health.v1.Health"]:
    assert want in services, f"{want} missing from reflection"

pool = descriptor_pool.DescriptorPool()
resp = ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol="synapse.v1.Skills"))
for raw in resp.file_descriptor_response.file_descriptor_proto:
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(raw))
InvokeRequest = message_factory.GetMessageClass(pool.FindMessageTypeByName("synapse.v1.InvokeRequest"))
InvokeResponse = message_factory.GetMessageClass(pool.FindMessageTypeByName("synapse.v1.InvokeResponse"))

health = channel.unary_unary("/grpc.health.v1.Health/Check",
                             request_serializer=lambda b: b, response_deserializer=lambda b: b)
# HealthCheckRequest{service=""} is the empty message; status field 1 = SERVING (1).
for _ in range(50):
    if health(b"", timeout=5) == b"\x08\x01":
        break
    time.sleep(0.1)
else:
    raise SystemExit("health never reported SERVING")
print("health: SERVING")

invoke = channel.unary_unary("/synapse.v1.Skills/Invoke",
                             request_serializer=lambda m: m.SerializeToString(),
                             response_deserializer=InvokeResponse.FromString)
req = InvokeRequest(skill="counter", instance="py", method="incr", payload=json.dumps({"by": 5}).encode())
out = invoke(req, metadata=[("authorization", f"Bearer {token}")], timeout=10)
assert json.loads(out.reply) == {"value": 5}, out
print("invoke:", out.reply.decode(), "version", out.version)
try:
    invoke(req, timeout=10)
    raise SystemExit("call without a token succeeded")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code()
    print("no token:", e.code().name)
print("OK")
