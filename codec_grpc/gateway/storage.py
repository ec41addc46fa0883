"""The storage-aware codec routes: Temporal's External Storage, for the Web UI and the CLI.

With EXTERNAL_STORAGE_BUCKETS set, the gateway's routes follow the codec-server
protocol for External Storage (docs/storage.md):

* ``POST …/decode`` decodes every payload and, by default, **resolves references**:
  retrieves what each points to and decodes that in its place (the CLI relies on
  it). With ``?preserveStorageRefs=true`` (what the Web UI sends) references come
  back as references: a marked (codec-encoded) one decoded to its readable form,
  so that the UI sees it is a reference and offers its download.
* ``POST …/download`` takes one reference, as the history holds it, and answers
  the stored payload, decoded; the query does not change that.
* ``POST …/encode`` encodes, then stores every encoded payload of at least
  EXTERNAL_STORAGE_THRESHOLD bytes in EXTERNAL_STORAGE_BUCKET and answers a
  reference in its place (when offloading is configured).

A request is at most three calls of the upstream and one round of S3 requests:
Decode of the marked references alone (other payloads replaced by empty ones, so
that an error names the payload's own index), S3, then Decode of the whole batch
with each reference replaced by its stored payload. The stored payload's namespace
binding is checked by that Decode as for any payload. Without references it is
exactly the one upstream call it was.

:data:`STATUS` maps the storage errors to HTTP statuses: the one place.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from codec_grpc.core import protowire as wire
from codec_grpc.gateway.statuses import FAILED, HttpError
from codec_grpc.gateway.upstreams import Credentials, Upstream
from codec_grpc.storage import references
from codec_grpc.storage.errors import (
    StorageError,
    StorageForbiddenError,
    StorageLimitError,
    StorageReferenceError,
    StorageUnavailableError,
    StoredPayloadNotFoundError,
)
from codec_grpc.storage.references import Kind
from codec_grpc.storage.store import PayloadStore

log = logging.getLogger(__name__)

# A missing object is 400, not 404: the Web UI reads a 404 from /download as "this codec server has no
# /download" and says so, which would send a person looking in the wrong place.
STATUS: Mapping[type[StorageError], int] = {
    StorageReferenceError: 400,
    StorageForbiddenError: 403,
    StoredPayloadNotFoundError: 400,
    StorageLimitError: 413,
    StorageUnavailableError: 503,
}
PRESERVE_QUERY = "preserveStorageRefs"


def http_error(exc: StorageError) -> HttpError:
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 502)
    return HttpError(status, str(exc))


class StorageRoutes:
    """Encode, Decode and Download over an upstream, with the payloads of ``store``."""

    def __init__(self, store: PayloadStore) -> None:
        self._store = store

    async def call(
        self,
        upstream: Upstream,
        action: str,
        request: bytes,
        *,
        namespace: str,
        timeout: float,
        credentials: Credentials,
        preserve_refs: bool = False,
    ) -> bytes:
        """The serialized response for ``action`` ("encode", "decode" or "download") on a serialized
        request; failures are raised as :class:`HttpError`."""
        call = _Call(self._store, upstream, namespace, timeout, credentials)
        try:
            if action == "encode":
                return await call.encode(request)
            payloads, _ = wire.split_request(request)
            if action == "download":
                _check_download(payloads)
                return await call.decode(payloads, resolve=True)
            return await call.decode(payloads, resolve=not preserve_refs)
        except StorageError as exc:
            log.warning("request refused: external storage: %s", exc)
            raise http_error(exc) from None
        except wire.WireError as exc:
            log.warning("malformed %s response from the codec service: %s", action, exc)
            raise HttpError(*FAILED) from None

    def close(self) -> None:
        self._store.close()


def _check_download(payloads: list[bytes]) -> None:
    if len(payloads) != 1 or references.kind(payloads[0]) is Kind.ORDINARY:
        shown = f"{len(payloads)} payloads" if len(payloads) != 1 else "a payload that is not a reference"
        raise HttpError(
            400, f'…/download takes one external storage reference ({{"payloads": [<reference>]}}), got {shown}'
        )


class _Call:
    """One request's calls of the upstream and of the store."""

    def __init__(
        self, store: PayloadStore, upstream: Upstream, namespace: str, timeout: float, credentials: Credentials
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._namespace = namespace
        self._timeout = timeout
        self._credentials = credentials
        self._suffix = wire.field(2, namespace.encode())

    async def _upstream_call(self, method: str, payloads: list[bytes]) -> list[bytes]:
        request = wire.join_response(payloads) + self._suffix  # a request is a response plus its namespace
        response = await self._upstream.call(method, request, self._timeout, self._credentials)
        answers, _ = wire.split_request(response)
        if len(answers) != len(payloads):
            log.warning("the codec service answered %d payloads for %d", len(answers), len(payloads))
            raise HttpError(*FAILED)
        return answers

    async def encode(self, request: bytes) -> bytes:
        response = await self._upstream.call("Encode", request, self._timeout, self._credentials)
        encoded, _ = wire.split_request(response)
        large = [index for index, raw in enumerate(encoded) if self._store.offloads(len(raw))]
        if not large:
            return response
        stored = await self._store.offload([encoded[index] for index in large], self._namespace, self._timeout)
        for index, reference in zip(large, stored, strict=True):
            encoded[index] = reference
        return wire.join_response(encoded)

    async def decode(self, payloads: list[bytes], *, resolve: bool) -> bytes:
        kinds = [references.kind(raw) for raw in payloads]
        if all(found is Kind.ORDINARY for found in kinds):
            return wire.join_response(await self._upstream_call("Decode", payloads))
        batch = list(payloads)
        marked = [index for index, found in enumerate(kinds) if found is Kind.MARKED]
        if marked:
            await self._decode_marked(batch, marked)
        if resolve:
            found = [(index, batch[index]) for index, kind in enumerate(kinds) if kind is not Kind.ORDINARY]
            claims = self._store.claims(found, self._namespace)  # every check before any S3 call
            stored = await self._store.retrieve(claims, self._timeout)
            for (index, _), raw in zip(claims, stored, strict=True):
                batch[index] = raw
        return wire.join_response(await self._upstream_call("Decode", batch))

    async def _decode_marked(self, batch: list[bytes], marked: list[int]) -> None:
        """Replace each marked reference in ``batch`` by its decoded, readable form."""
        only = {index: references.unmarked(batch[index]) for index in marked}
        decoded = await self._upstream_call("Decode", [only.get(index, b"") for index in range(len(batch))])
        for index in marked:
            if references.kind(decoded[index]) is not Kind.REFERENCE:
                raise StorageReferenceError(
                    "marked as an external storage reference, but does not decode to one", index
                )
            batch[index] = references.with_size_of(decoded[index], batch[index])
