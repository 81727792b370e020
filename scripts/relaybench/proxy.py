"""The shaping proxy between every client and moto: a nearby gateway on a shared link.

Run as its own process (``python -m relaybench.proxy --backend-port P ...``); it prints one
JSON line with its ports once it listens, and answers ``stats``/``reset`` lines on a control
port (and ``down``/``up``: an outage, every connection cut), so the measuring process neither shares its GIL nor its event loop.

The link model, per direction:

* **Bandwidth** is a virtual clock: a chunk of n bytes occupies the link for n/rate seconds
  after the previous chunk (of any connection: the cap is shared); a per-connection cap
  (optional) is a second clock per connection, and a chunk waits for both. The reader stops
  reading while its reservation is ahead of real time, which pushes back on the sender as
  a slow link would.
* **Delay** is added after serialisation: each chunk is scheduled for
  ``serialised_at + delay`` and a separate writer task sends it at that time. Reading goes
  on meanwhile, so the delay is pipelined: a stream pays it once, not once per chunk.
* **In flight** per direction of a connection is bounded (about one bandwidth-delay product,
  at least 4 MiB), so a client that reads a GET body slowly (or stops after 4 KiB) does not
  make the proxy pull a whole 1 GiB object into memory.
* Optionally a new connection pays one round trip before its first byte goes out, as a TCP
  handshake would (off by default, to match the rig that measured the peer figures).

The reader sleeps only when its reservation is more than 6 ms ahead, and wakes 3 ms early:
the event loop wakes up with millisecond granularity, and a reader that overslept would
leave the link idle and lose bandwidth to timer slack (the clock, not the sleep, is what
enforces the cap).

It also reads just enough HTTP to count, per reset period: connections, requests by method,
ranged GETs, ``Expect: 100-continue`` headers, ``100 Continue`` and ``Connection: close``
answers. A request is recognised only in the first client chunk after the server last
spoke, which is exact for clients that do not pipeline requests (none here do).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import sys
from collections import Counter
from dataclasses import dataclass, field

CHUNK = 256 * 1024
MIN_SLEEP = 0.003
_REQUEST = re.compile(rb"^(GET|PUT|POST|HEAD|DELETE) ")


class Clock:
    """A link's virtual clock: when the bytes reserved so far will have been serialised."""

    def __init__(self, rate: float) -> None:
        self.rate = rate  # bytes per second; 0: unlimited
        self.free_at = 0.0

    def reserve(self, n: int, now: float) -> float:
        if self.rate <= 0:
            return now
        self.free_at = max(now, self.free_at) + n / self.rate
        return self.free_at


@dataclass
class Stats:
    connections: int = 0
    requests: Counter = field(default_factory=Counter)
    ranged_gets: int = 0
    expect_100: int = 0
    continue_100: int = 0
    conn_close_answers: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "connections": self.connections,
            "requests": dict(self.requests),
            "ranged_gets": self.ranged_gets,
            "expect_100": self.expect_100,
            "continue_100": self.continue_100,
            "conn_close_answers": self.conn_close_answers,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
        }


class Proxy:
    def __init__(self, backend: tuple[str, int], delay: float, rate: float, conn_rate: float,
                 connect_rtt: bool) -> None:
        self.backend = backend
        self.delay = delay
        self.rate = rate
        self.conn_rate = conn_rate
        self.connect_rtt = connect_rtt
        self.up = Clock(rate)  # client -> server
        self.down = Clock(rate)  # server -> client
        self.stats = Stats()
        self.outage = False  # "down": every connection is cut, new ones at once
        self.open_writers: set[asyncio.StreamWriter] = set()
        self.window = max(4 * 1024 * 1024, int(2 * rate * delay) if rate > 0 else 16 * 1024 * 1024)

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        if self.outage:
            cwriter.close()
            return
        try:
            sreader, swriter = await asyncio.open_connection(*self.backend, limit=4 * CHUNK)
        except OSError:
            cwriter.close()
            return
        for w in (cwriter, swriter):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.connections += 1
        self.open_writers.update((cwriter, swriter))
        state = {"await_request": True}
        not_before = accepted + 2 * self.delay if self.connect_rtt else 0.0
        up = asyncio.create_task(self.pump(creader, swriter, self.up, Clock(self.conn_rate), True, state, not_before))
        down = asyncio.create_task(self.pump(sreader, cwriter, self.down, Clock(self.conn_rate), False, state, 0.0))
        try:
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
            if any(t.exception() for t in done if not t.cancelled()):
                for t in pending:
                    t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            for w in (cwriter, swriter):
                self.open_writers.discard(w)
                with contextlib.suppress(Exception):
                    w.close()

    def _sniff(self, data: bytes, client_side: bool, state: dict[str, bool]) -> None:
        if client_side:
            self.stats.bytes_up += len(data)
            if not state["await_request"]:
                return
            state["await_request"] = False
            m = _REQUEST.match(data)
            if not m:
                return
            method = m.group(1).decode()
            self.stats.requests[method] += 1
            head = data[:16384].split(b"\r\n\r\n", 1)[0].lower()
            if b"\r\nexpect: 100-continue" in head:
                self.stats.expect_100 += 1
            if method == "GET" and b"\r\nrange:" in head:
                self.stats.ranged_gets += 1
        else:
            self.stats.bytes_down += len(data)
            if data.startswith(b"HTTP/1."):
                head = data[:16384].split(b"\r\n\r\n", 1)[0].lower()
                if head[9:12] == b"100":
                    self.stats.continue_100 += 1
                elif b"\r\nconnection: close" in head:
                    self.stats.conn_close_answers += 1
            state["await_request"] = True

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Clock,
                   conn: Clock, client_side: bool, state: dict[str, bool], not_before: float) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        room = asyncio.Event()
        room.set()
        in_flight = 0

        async def sender() -> None:
            try:
                await send_all()
            finally:
                room.set()  # a failed sender must not leave the reader waiting for room

        async def send_all() -> None:
            nonlocal in_flight
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    with contextlib.suppress(OSError, RuntimeError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                in_flight -= len(data)
                if in_flight <= self.window:
                    room.set()

        task = asyncio.create_task(sender())
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                self._sniff(data, client_side, state)
                t = loop.time()
                done = max(link.reserve(len(data), t), conn.reserve(len(data), t))
                queue.put_nowait((max(done, not_before) + self.delay, data))
                in_flight += len(data)
                if in_flight > self.window:
                    room.clear()
                    await room.wait()
                if task.done():  # the other side went away: stop reading this one
                    task.result()
                    return
                ahead = done - loop.time()
                if ahead > 2 * MIN_SLEEP:  # wake a little early: the clock must never run idle
                    await asyncio.sleep(ahead - MIN_SLEEP)
            queue.put_nowait((loop.time() + self.delay, None))
            await task
        except BaseException:
            task.cancel()
            raise

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while line := await reader.readline():
                cmd = line.decode().strip()
                if cmd == "stats":
                    writer.write((json.dumps(self.stats.as_dict()) + "\n").encode())
                elif cmd in ("down", "up"):
                    self.outage = cmd == "down"
                    if self.outage:
                        for w in list(self.open_writers):
                            with contextlib.suppress(Exception):
                                w.transport.abort()
                    writer.write(b"ok\n")
                elif cmd == "reset":
                    self.stats = Stats()
                    writer.write(b"ok\n")
                else:
                    writer.write(b"unknown\n")
                await writer.drain()
        writer.close()


async def serve(args: argparse.Namespace) -> None:
    proxy = Proxy(("127.0.0.1", args.backend_port), args.delay_ms / 1000, args.bandwidth_mbps * 1e6,
                  args.per_conn_mbps * 1e6, args.connect_rtt)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port, limit=4 * CHUNK, backlog=512)
    control = await asyncio.start_server(proxy.control, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cport = control.sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "control": cport}), flush=True)
    async with server, control:
        await asyncio.gather(server.serve_forever(), control.serve_forever())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="shaping TCP proxy: pipelined one-way delay and bandwidth caps")
    p.add_argument("--backend-port", type=int, required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay added to every chunk")
    p.add_argument("--bandwidth-mbps", type=float, default=100.0, help="MB/s per direction, shared; 0: none")
    p.add_argument("--per-conn-mbps", type=float, default=0.0, help="MB/s per direction per connection; 0: none")
    p.add_argument("--connect-rtt", action="store_true", help="a new connection pays one round trip first")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
