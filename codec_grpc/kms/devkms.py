"""An embedded, KMS-compatible endpoint for development: moto's server on loopback.

``make run`` uses it when no AWS configuration is present, so the service runs
offline through exactly the same boto3 code path as in production. Keys it
holds live in memory only and vanish when the process stops: never use it for
data you need to keep.

With KMS_REGIONS it serves every Region (moto keeps one state per Region, chosen by each
request's signature) and holds multi-Region keys: created in the first Region, replicated to
the others, with the alias in each (:func:`provision_multi_region`).
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

DEV_REGION = "us-east-1"
DEV_ACCESS_KEY = "dev-kms-not-a-secret"
DEV_SECRET_KEY = "dev-kms-not-a-secret"  # noqa: S105 - moto accepts any


class DevKms:
    """moto's KMS server in a background thread, listening on 127.0.0.1 only."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer  # only development installs have moto

        fix_multi_region_ciphertexts()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> str:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per KMS call otherwise
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self._server.stop()


def provision(client: Any, aliases: Iterable[str]) -> dict[str, str]:
    """Create one symmetric key per alias (``alias/...`` names only); return alias → key ARN."""
    arns: dict[str, str] = {}
    for alias in sorted(set(aliases)):
        if not alias.startswith("alias/"):
            log.warning("development KMS: %s is not an alias name; create that key yourself", alias)
            continue
        key = client.create_key(Description=f"development key for {alias}")["KeyMetadata"]
        client.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
        arns[alias] = key["Arn"]
    return arns


def provision_multi_region(clients: Mapping[str, Any], aliases: Iterable[str]) -> dict[str, str]:
    """Create one multi-Region key per alias in the first Region of ``clients`` (Region → client), replicate
    it to the others and create the alias in each; return alias → the primary key's ARN."""
    regions = list(clients)
    first = clients[regions[0]]
    arns: dict[str, str] = {}
    for alias in sorted(set(aliases)):
        if not alias.startswith("alias/"):
            log.warning("development KMS: %s is not an alias name; create that key yourself", alias)
            continue
        key = first.create_key(Description=f"development key for {alias}", MultiRegion=True)["KeyMetadata"]
        for region in regions[1:]:
            first.replicate_key(KeyId=key["KeyId"], ReplicaRegion=region)
        for client in clients.values():
            # moto's replicas share their primary's aliases: created in one Region, the alias is in all.
            with contextlib.suppress(client.exceptions.AlreadyExistsException):
                client.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
        arns[alias] = key["Arn"]
    return arns


# moto's multi-Region key ids: "mrk-" and a UUID (AWS's are "mrk-" and 32 hex digits).
_MULTI_REGION_KEY_ID_LEN = 40


def fix_multi_region_ciphertexts() -> None:
    """Let moto unwrap data keys of multi-Region keys: call before moto serves a request.

    moto (5.2 at least) stores the key id in a 36-byte field of its ciphertext blobs, which cuts its
    own multi-Region key ids ("mrk-" and a UUID, 40 characters) short; its Decrypt then finds no such
    key and answers AccessDeniedException, in any Region. This widens the field (moto's own format,
    nothing KMS clients see into) and strips the padding shorter ids get. Does nothing to a moto whose
    field is wide enough.
    """
    from moto.kms import utils  # only development installs have moto

    if utils.KEY_ID_LEN >= _MULTI_REGION_KEY_ID_LEN:
        return
    utils.KEY_ID_LEN = _MULTI_REGION_KEY_ID_LEN
    utils.HEADER_LEN = utils.KEY_ID_LEN + utils.IV_LEN + utils.TAG_LEN
    utils.CIPHERTEXT_HEADER_FORMAT = f">{utils.KEY_ID_LEN}s{utils.IV_LEN}s{utils.TAG_LEN}s"

    def deserialize(ciphertext_blob: bytes) -> Any:
        header, ciphertext = ciphertext_blob[: utils.HEADER_LEN], ciphertext_blob[utils.HEADER_LEN :]
        key_id, iv, tag = struct.unpack(utils.CIPHERTEXT_HEADER_FORMAT, header)
        return utils.Ciphertext(key_id=key_id.rstrip(b"\0").decode("utf-8"), iv=iv, ciphertext=ciphertext, tag=tag)

    utils._deserialize_ciphertext_blob = deserialize
