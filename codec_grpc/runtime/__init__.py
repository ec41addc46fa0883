"""The composition root: configuration, wiring and the processes.

* :mod:`~codec_grpc.runtime.config`: the settings table and the one validated
  :class:`Config`, read once at start-up;
* :mod:`~codec_grpc.runtime.wiring`: builds the layers from a ``Config``;
* :mod:`~codec_grpc.runtime.server_process` (``codec-server``, ``server.py``) and
  :mod:`~codec_grpc.runtime.gateway_process` (``codec-gateway``): the processes;
* :mod:`~codec_grpc.runtime.metrics` (every Prometheus definition),
  :mod:`~codec_grpc.runtime.multiprocess` (metrics across WORKERS),
  :mod:`~codec_grpc.runtime.workers` (the WORKERS supervisor),
  :mod:`~codec_grpc.runtime.tls`, :mod:`~codec_grpc.runtime.logs`.
"""
