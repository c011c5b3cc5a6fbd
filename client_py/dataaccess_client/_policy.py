"""How the client calls: channel options, and each call's deadline, credentials and retries."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from dataaccess_client.errors import from_rpc_error, status_code

TOKEN_ENV = "DATAACCESS_TOKEN"

# One pause never grows past this, however many retries are allowed.
_MAX_PAUSE = 5.0

ChannelOptions = Sequence[tuple[str, str | int]]

# gRPC's 4 MiB default is smaller than a Query result the server may send. round_robin:
# over a dns:/// name with several addresses (a headless Service), each call goes to the
# next replica; gRPC's default (pick_first) would send every call to one.
_DEFAULT_OPTIONS: ChannelOptions = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.lb_policy_name", "round_robin"),
)


def channel_options(extra: ChannelOptions | None) -> list[tuple[str, str | int]]:
    """The default channel options followed by the caller's, which gRPC lets win."""
    return [*_DEFAULT_OPTIONS, *(extra or ())]


@dataclass(frozen=True)
class CallPolicy:
    """The settings every call of one client shares."""

    timeout: float
    retries: int
    backoff: float
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def build(
        cls,
        *,
        timeout: float,
        retries: int,
        backoff: float,
        token: str | None,
        environ: Mapping[str, str] = os.environ,
    ) -> CallPolicy:
        """A validated policy; the token falls back to $DATAACCESS_TOKEN."""
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if retries < 0 or not backoff >= 0:
            raise ValueError("retries and backoff must not be negative")
        token = environ.get(TOKEN_ENV) if token is None else token
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return cls(timeout=timeout, retries=retries, backoff=backoff, metadata=metadata)

    def budget(self, timeout: float | None) -> float:
        """The seconds one call may take: ``timeout``, or the client's when None."""
        return self.timeout if timeout is None else timeout

    def attempts(self, timeout: float | None, *, retry: bool) -> Attempts:
        """The attempts of one call, all within ``timeout`` (the default when None)."""
        return Attempts(
            deadline=time.monotonic() + self.budget(timeout),
            retries=self.retries if retry else 0,
            backoff=self.backoff,
        )


class Attempts:
    """One call's attempts: the time left for each, and the pause before the next."""

    def __init__(self, deadline: float, retries: int, backoff: float) -> None:
        self._deadline = deadline
        self._retries = retries
        self._backoff = backoff
        self._made = 0

    def remaining(self) -> float:
        """Seconds left before the call's deadline; the next attempt's timeout."""
        return max(self._deadline - time.monotonic(), 0.0)

    def pause_after(self, err: grpc.RpcError) -> float | None:
        """The pause before retrying after ``err``, or None when the call must fail now."""
        if status_code(err) is not grpc.StatusCode.UNAVAILABLE or self._made >= self._retries:
            return None
        pause = jittered(self._backoff * 2**self._made)
        # A retry that could not finish before the deadline only hides the real error.
        if pause >= self.remaining():
            return None
        self._made += 1
        return pause

    def pause_or_raise(self, err: grpc.RpcError) -> float:
        """The pause before retrying after ``err``; raises it as a client error if none is due."""
        pause = self.pause_after(err)
        if pause is None:
            raise from_rpc_error(err) from err
        return pause


def jittered(pause: float) -> float:
    """``pause`` capped, then spread over its upper half so clients do not retry in step."""
    capped = min(pause, _MAX_PAUSE)
    return capped / 2 + random.uniform(0, capped / 2)


@dataclass(frozen=True)
class TlsFiles:
    """TLS for a channel: the CA that signed the server, and a client certificate for mTLS."""

    ca_file: str | None = None  # None: the system's roots
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "TlsFiles: a client certificate needs its key, and a key its certificate"
            )

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials these files make."""

        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )
