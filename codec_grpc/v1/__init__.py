"""Code generated from protos/codec_grpc/v1/codec.proto by `make proto` (not committed)."""
