"""Messages of ``codec_grpc.v1``, generated from the repository's ``protos/`` when the package is built.

``codec_pb2`` is not in the source tree (``setup.py`` writes it into the build). Its file name
stays ``codec_grpc/v1/codec.proto``, so the descriptor it registers is the server's own and both
packages can be imported in one process.
"""
