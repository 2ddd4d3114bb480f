"""The gRPC layer: decode requests, map errors to status codes, encode results."""
