"""The gRPC contract (paas.proto) and its generated, committed stubs."""
