"""moto's KMS server able to unwrap data keys of multi-Region keys: ``python -m tests.support.mrk_moto -p PORT``.

moto 5.2 cuts its ``mrk-`` key ids (40 characters) short in its ciphertext blobs, so its Decrypt
refuses every data key a multi-Region key wrapped (AccessDeniedException), in every Region. This runs moto's own server
main after :func:`codec_grpc.kms.devkms.fix_multi_region_ciphertexts` (the development KMS applies
the same fix). One process holds every Region, as moto keeps one state per account and Region:
a replica made with ReplicateKey shares its primary's key material, as in KMS.
"""

from __future__ import annotations

import sys

from codec_grpc.kms.devkms import fix_multi_region_ciphertexts


def main() -> None:
    fix_multi_region_ciphertexts()
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
