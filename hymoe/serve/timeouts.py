"""A deadline on each request's arrival: uvicorn times out only idle keep-alive connections, so a
client that sends half its headers, or a Content-Length it never delivers, held its connection
(and an asyncio task) forever. Here every request must arrive whole, headers and body, within
`request_timeout` seconds of its first byte (of the connection, for the first one); otherwise the
server answers 408 and closes the connection. Time spent computing the answer does not count.
`start_on_loopback` runs the app with it in a thread (the soak benchmark and the tests).
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_TIMEOUT = 30.0


def _refusal(status: str, message: str) -> bytes:
    """A whole JSON error answer that closes the connection, written before any response began."""
    body = b'{"error": {"message": "%s", "type": "invalid_request_error"}}\n' % message.encode()
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (status.encode(), len(body), body))


_TIMEOUT_RESPONSE = _refusal("408 Request Timeout", "the request did not arrive in time")
_BAD_HTTP_RESPONSE = _refusal("400 Bad Request", "the request is not valid HTTP/1.1")


class _DeadlineProtocol(H11Protocol):
    request_timeout = REQUEST_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on a kept-alive connection begins
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
            self._disarm()  # the request has arrived whole (or the connection is done with)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """h11 could not parse the request: OpenAI's error JSON, not uvicorn's plain text."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(_BAD_HTTP_RESPONSE)
        self.transport.close()

    def _expire(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not (self.cycle and self.cycle.response_started):
                self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


def config(app, request_timeout: float = REQUEST_TIMEOUT, **kw) -> uvicorn.Config:
    """uvicorn's Config for hymoe's app: the h11 protocol with the request deadline. No route is a
    WebSocket, so an Upgrade header is ignored (ws="none") rather than handed to uvicorn's websockets
    protocol, which answers in plain text and has no deadline."""
    protocol = type("DeadlineProtocol", (_DeadlineProtocol,), {"request_timeout": request_timeout})
    return uvicorn.Config(app, http=protocol, ws="none", **kw)


def start_on_loopback(app, request_timeout: float = REQUEST_TIMEOUT) -> tuple[uvicorn.Server, threading.Thread, int]:
    """The app served on a free loopback port by a thread of this process (benchmarks and tests):
    (server, its thread, port), returned once it accepts connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(config(app, request_timeout, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, port
