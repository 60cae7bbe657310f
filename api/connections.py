"""Connections that stop sending their request are closed.

uvicorn bounds no part of reading a request: its keep-alive timeout runs only between two requests, once
a response is complete. A client that opens a connection and sends nothing, stops halfway through its
headers, or announces `Content-Length: 1000` and sends 10 bytes holds that connection for good, and for a
stalled body an ASGI task as well; a few hundred such clients (slowloris) starve the gateway. Neither
httptools nor h11 has a read timeout to turn on, so this module adds one to whichever HTTP protocol uvicorn
would pick (`AutoHTTPProtocol`: httptools when installed, as it is with Keel's dependencies, else h11):

- a request must arrive whole, headers and body, within `KEEL_REQUEST_READ_TIMEOUT_SECONDS` of its first
  byte (of the connection being opened, for a connection's first request); past that a partial request is
  answered `408 Request Timeout` and the connection closed (one that sent nothing is simply closed);
- once the request is in, its response may take as long as it needs: an SSE stream of a run that waits an
  hour for an approval is not cut;
- time during which the gateway itself stopped reading (flow control while the app has not yet asked for
  more of the body, or a pipelined request waiting for the one before it) does not count against the client;
- idle connections between requests are uvicorn's own keep-alive timeout (`KEEL_KEEP_ALIVE_SECONDS`).

The bound is on the whole request, not on the gap between two reads, so a body trickled one byte at a time
cannot stretch it either.
"""

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # For the type checker, one of the two (their shared surface is what this module uses); at run time
    # whichever uvicorn picked.
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HTTPProtocol
else:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol as _HTTPProtocol


class RequestReadDeadline(_HTTPProtocol):
    """uvicorn's HTTP protocol, with a deadline for reading each request (see the module docstring).

    It relies on what uvicorn's httptools and h11 protocols share: `cycle` (the request being served, with
    `more_body`, `response_started` and `response_complete`), `flow` (reading paused or not), `transport`,
    `connection_made`, `data_received`, `on_response_complete` and `connection_lost`.
    """

    read_timeout: float = 20.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        # Whether bytes of the request being waited for have arrived: a partial request gets a 408, a
        # connection that sent nothing is just closed.
        self._request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        self._arm_read_deadline()  # an opened connection owes us its first request

    def data_received(self, data: bytes) -> None:
        if not self._request_read():
            self._request_begun = True
            if self._read_deadline is None:
                self._arm_read_deadline()
        super().data_received(data)
        if self._request_read():
            self._disarm_read_deadline()

    def on_response_complete(self) -> None:
        self._disarm_read_deadline()
        self._request_begun = False
        super().on_response_complete()  # arms uvicorn's keep-alive timeout, or starts a pipelined request
        if self.cycle is not None and not self.cycle.response_complete and self.cycle.more_body:
            # A pipelined request whose body is still to come: it is being read now.
            self._request_begun = True
            self._arm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_deadline()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, *args: Any) -> None:
        # The connection now belongs to the WebSocket protocol (when one is installed), with its own pings.
        self._disarm_read_deadline()
        super().handle_websocket_upgrade(*args)

    def _request_read(self) -> bool:
        """The current request is in, whole, and its response is under way (perhaps for a long while)."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and not cycle.more_body

    def _arm_read_deadline(self) -> None:
        self._disarm_read_deadline()
        self._read_deadline = self.loop.call_later(self.read_timeout, self._read_deadline_passed)

    def _disarm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_deadline_passed(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing() or self._request_read():
            return
        if self.flow.read_paused:
            # The gateway is holding the client back, not the other way round: give it a fresh period.
            self._arm_read_deadline()
            return
        self._close_stalled_connection()

    def _close_stalled_connection(self) -> None:
        cycle = self.cycle
        answerable = self._request_begun and (
            cycle is None or cycle.response_complete or not cycle.response_started
        )
        if answerable:
            self.logger.warning(
                "Closed a connection from %s that did not send its whole request within %s s.",
                _peer(self.client),
                self.read_timeout,
            )
            self.transport.write(self._timeout_response())
        self.transport.close()

    def _timeout_response(self) -> bytes:
        body = f"The request did not arrive in full within {self.read_timeout:g} s.\n".encode()
        head = (
            "HTTP/1.1 408 Request Timeout\r\n"
            "content-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        return head.encode() + body


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"


def request_read_deadline_protocol(read_timeout: float) -> type[RequestReadDeadline]:
    """The protocol class to hand uvicorn (`http=`), with this process's read timeout."""
    return type("RequestReadDeadline", (RequestReadDeadline,), {"read_timeout": read_timeout})
