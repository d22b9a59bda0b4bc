"""`stagegraph serve`: a pipeline over a collection behind an HTTP API that holds load and refuses bad requests.

* `settings`   - `ServeSettings`: every limit and switch, with the flag that sets it;
* `models`     - the pydantic records of every request and response;
* `errors`     - one error shape, `{"error": {"code", "message", "field"}}`, and status codes;
* `runtime`    - compute slots, the bounded queue, deadlines and cancellation;
* `batching`   - micro-batching of cross-encoder pairs from concurrent requests;
* `metrics`    - the Prometheus metrics;
* `security`   - the API key, where to listen, what a request may never do;
* `middleware` - request ids, metrics, the last-resort 500, the body limit;
* `service`    - `Service`: the stack, its workers and writes, without HTTP;
* `app`        - `create_app(service)`: the FastAPI routes;
* `server`     - `run(service)`: uvicorn, signals, drain and close.

The server's dependencies (FastAPI, uvicorn, prometheus-client) are the `serve` extra:
`pip install -e ".[serve]"`.
"""

from stagegraph.serve.settings import Batching, Limits, ServeSettings

__all__ = ["Batching", "Limits", "ServeSettings"]
