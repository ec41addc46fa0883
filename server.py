"""codec-server: the Temporal payload codec server (gRPC CodecService and the HTTP gateway).

``python server.py --help`` lists every setting. The process itself lives in
``codec_grpc.runtime.server_process``; this file is its entry point.
"""

import sys

from codec_grpc.runtime.server_process import main

if __name__ == "__main__":
    sys.exit(main())
