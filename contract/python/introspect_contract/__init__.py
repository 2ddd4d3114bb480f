"""The introspect.v1 contract for Python: the code generated from protos/ (by
scripts/generate_protos.py, never edited by hand), the tensor codec and the enum names.

The client (`introspect_client`) and the server (`introspect`) both import this package
and never each other. It needs grpcio, protobuf and numpy, not torch.

    from introspect_contract import pb, pb_grpc, tensors
"""

from . import introspect_pb2 as pb
from . import introspect_pb2_grpc as pb_grpc
from . import tensors

__all__ = ["pb", "pb_grpc", "tensors"]
