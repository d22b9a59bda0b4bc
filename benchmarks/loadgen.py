"""A small load generator for `benchmarks/serve.py`: an HTTP/1.1 client with keep-alive connections
(cheap enough not to be the bottleneck), closed loops (N clients, each sending its next request when
the last one answered) and open loops (requests scheduled at a fixed rate, latency counted from
each one's scheduled time), and a `Tally` of statuses, latencies and the server's Server-Timing.
Loopback only; every loop is bounded in requests and seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import numpy as np


def request_bytes(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def parse_timing(value: str) -> dict[str, float]:
    out = {}
    for part in value.split(","):
        name, _, dur = part.strip().partition(";dur=")
        try:
            out[name] = float(dur)
        except ValueError:
            pass
    return out


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, payload: bytes) -> tuple[int, dict[str, float], bool]:
        self.writer.write(payload)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length, timing, close = 0, {}, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "server-timing":
                timing = parse_timing(value)
            elif name == "connection" and "close" in value.lower():
                close = True
        if length:
            await self.reader.readexactly(length)
        return status, timing, close

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Keep-alive connections to one server, opened as needed (at most `limit`)."""

    def __init__(self, host: str, port: int, limit: int = 512):
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[Conn] = []
        self.opened = 0

    async def send(self, payload: bytes) -> tuple[int, dict[str, float]]:
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            self.opened += 1
            conn = await Conn.open(self.host, self.port)
        try:
            status, timing, close = await conn.send(payload)
        except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            conn.close()
            return -1, {}
        if close:
            conn.close()
        else:
            self.idle.append(conn)
        return status, timing

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []  # ms, answered 200
        self.statuses: list[int] = []
        self.queue: list[float] = []
        self.compute: list[float] = []
        self.fast_503: list[float] = []  # ms seen by the client, from the scheduled time in open loops
        self.server_503: list[float] = []  # ms inside the server (Server-Timing total)
        self.elapsed = 0.0

    def add(self, status: int, ms: float, timing: dict[str, float]) -> None:
        self.statuses.append(status)
        if status == 200:
            self.latencies.append(ms)
            self.queue.append(timing.get("queue", float("nan")))
            self.compute.append(timing.get("compute", float("nan")))
        elif status == 503:
            self.fast_503.append(ms)
            self.server_503.append(timing.get("total", float("nan")))

    def row(self, label: str) -> dict:
        n = len(self.statuses)
        lat = np.array(self.latencies) if self.latencies else np.array([np.nan])
        ok = sum(1 for s in self.statuses if s == 200)
        return {
            "level": label, "requests": n, "rps": ok / self.elapsed if self.elapsed else 0.0,
            "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99)),
            "error_rate": sum(1 for s in self.statuses if s not in (200, 503)) / max(n, 1),
            "errors": {str(s): self.statuses.count(s) for s in sorted(set(self.statuses)) if s not in (200, 503)},
            "rate_503": sum(1 for s in self.statuses if s == 503) / max(n, 1),
            "p99_503_ms": float(np.percentile(self.fast_503, 99)) if self.fast_503 else None,
            "p99_503_server_ms": float(np.nanpercentile(self.server_503, 99)) if self.server_503 else None,
            "queue_ms": float(np.nanmean(self.queue)) if self.queue else float("nan"),
            "compute_ms": float(np.nanmean(self.compute)) if self.compute else float("nan"),
        }


async def closed_loop(host: str, port: int, payloads: list[bytes], clients: int, seconds: float, max_requests: int) -> Tally:
    tally, pool = Tally(), Pool(host, port)
    counter = {"next": 0}
    end = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < end and counter["next"] < max_requests:
            i = counter["next"]
            counter["next"] += 1
            t0 = time.perf_counter()
            status, timing = await pool.send(payloads[i % len(payloads)])
            tally.add(status, (time.perf_counter() - t0) * 1000.0, timing)
            if status == 503:  # a polite client: back off as Retry-After (>= 1 s) says, instead of spinning
                await asyncio.sleep(1.0)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    tally.elapsed = time.perf_counter() - started
    pool.close()
    return tally


async def open_loop(host: str, port: int, payloads: list[bytes], rate: float, seconds: float, max_requests: int,
                    grace: float) -> Tally:
    tally, pool = Tally(), Pool(host, port)
    n = max(1, min(max_requests, int(rate * seconds)))
    started = time.perf_counter()
    tasks = []

    async def one(i: int, scheduled: float) -> None:
        status, timing = await pool.send(payloads[i % len(payloads)])
        tally.add(status, (time.perf_counter() - scheduled) * 1000.0, timing)  # from the scheduled time

    for i in range(n):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, scheduled)))
    done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
        tally.statuses.append(-1)  # unanswered within the grace period: an error
    tally.elapsed = time.perf_counter() - started
    pool.close()
    return tally


# -- HTTP overhead ------------------------------------------------------------------------------------
def blocking_post(sock: socket.socket, payload: bytes) -> int:
    sock.sendall(payload)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1])
