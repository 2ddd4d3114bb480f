"""The introspect.v1 contract for Python: the code generated from protos/ (by
scripts/generate_protos.py, never edited by hand), the tensor codec and the enum names.

The client (`introspect_client`) and the server (`introspect`) both import this package
and never each other. It needs grpcio, protobuf and numpy, not torch.

    from introspect_contract import pb, pb_grpc, tensors

CONTRACT_VERSION is the contract's version, as the header of introspect.proto states it
(a test keeps the two equal); servers report it in GetServerInfo.
"""

from . import introspect_pb2 as pb
from . import introspect_pb2_grpc as pb_grpc
from . import tensors

CONTRACT_VERSION = "0.3.0"

__all__ = ["CONTRACT_VERSION", "pb", "pb_grpc", "tensors"]
