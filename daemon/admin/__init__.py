"""The gRPC admin plane: server, auth/error interceptor, and servicers that
translate between the protos in ``switchman_shared.proto_gen`` and daemon modules."""
