"""What the serve tests share: real collections of tiny models, and real servers to talk to.

* `build_collection(root, config, n)` writes a collection of `n` seeded documents (metadata `n`,
  `kind`) through the collection's own writer;
* `rerank_config(st, ce)` the hybrid-rerank pipeline over the tiny models of `tiny_models`;
* `ThreadServer(app)` runs uvicorn on an ephemeral loopback port in a thread of this process (so a
  test can hold a worker with a gate), `SubprocessServer(args)` runs `stagegraph serve` itself.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tiny_models import WORDS

from stagegraph.collection import Collection

REPO = Path(__file__).resolve().parents[1]
BASE_WORDS = [w for w in WORDS if w not in {"marker"}]


def doc(i: int, rng: random.Random) -> dict:
    return {"id": f"doc{i:03d}", "title": f"title {rng.choice(BASE_WORDS)}",
            "text": " ".join(rng.choice(BASE_WORDS) for _ in range(rng.randint(8, 40))) + ".",
            "metadata": {"n": i, "kind": "even" if i % 2 == 0 else "odd"}}


def build_collection(root: Path, config: dict, n: int = 40, seed: int = 5) -> Path:
    rng = random.Random(seed)
    store = Collection.create(root, config)
    store.upsert([doc(i, rng) for i in range(n)])
    store.close()
    return root


BM25_ONLY = {"pipeline": [{"type": "bm25", "name": "bm25", "k": 100}]}


def rerank_config(st: str, ce: str) -> dict:
    return {"pipeline": [
        {"parallel": [{"type": "bm25", "name": "bm25", "k": 20},
                      {"type": "dense", "name": "dense", "k": 20, "model": st, "index": "Flat"}]},
        {"type": "pool", "name": "pool", "k": 20},
        {"type": "cross_encoder", "name": "rerank", "model": ce, "depth": 10, "k": 5, "max_length": 64, "blend": 1.0},
    ]}


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1:<ephemeral> in a thread; `url`; stops on exit. With `settings`,
    configured as `stagegraph serve` configures it (`stagegraph.serve.server.uvicorn_config`)."""

    def __init__(self, app, settings=None):
        import uvicorn

        from stagegraph.serve.server import uvicorn_config

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = (uvicorn_config(app, settings, timeout_graceful_shutdown=5) if settings is not None else
                  uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the in-thread server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


LISTENING = re.compile(r"listening on (http://\S+)")


class SubprocessServer:
    """`stagegraph serve ...` in a child process; `url` once it printed where it listens."""

    def __init__(self, *args: str, env: dict | None = None):
        code = "import sys; from stagegraph.cli.app import main; sys.exit(main(sys.argv[1:]))"
        self.proc = subprocess.Popen([sys.executable, "-c", code, "serve", *args, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                     env={**os.environ, **(env or {}), "TQDM_DISABLE": "1"})
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        self.url = ""
        while not self.url:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read()
                raise AssertionError(f"the server exited ({self.proc.wait()}) before listening: {err[-2000:]}")
            self.lines.append(line)
            found = LISTENING.search(line)
            if found:
                self.url = found.group(1)
            assert time.monotonic() < deadline, "the server did not start in 120 s"
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 30) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> tuple[int, str, str]:
        """Wait for the server to exit by itself (no signal sent): its exit code, stdout and stderr."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + out, err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)


def post_json(url: str, body: dict, headers: dict | None = None, timeout: float = 30):
    import httpx

    return httpx.post(url, content=json.dumps(body), headers={"content-type": "application/json", **(headers or {})},
                      timeout=timeout)
