"""`/docs` without the internet: Swagger UI from files installed with the `serve` extra.

FastAPI's default `/docs` page loads Swagger UI's JavaScript and CSS from a CDN, so on a machine
that cannot reach it the page is blank, while our error messages say "see /docs". Here the page
points at copies served by this server under `/docs/static/`, taken from the `fastapi-offline`
package (MIT; it ships Swagger UI 5, which renders the OpenAPI 3.1 schema FastAPI writes; Swagger UI
4, as in `swagger-ui-bundle`, does not). FastAPI's own how-to, "Custom Docs UI Static Assets
(Self-Hosting)", describes the same arrangement.

Without that package (a server installed without the extra), `/docs` answers a short page that
links `/openapi.json` and names the README section and the package to install, instead of a blank one.
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse

DOCS_URL = "/docs"
STATIC_URL = "/docs/static"
ASSETS_PACKAGE = "fastapi-offline"
#: the files the page loads; all three must be there for the package to count as installed
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
README_SECTION = "Serving over HTTP"


def swagger_assets() -> Path | None:
    """The folder holding Swagger UI's files, or None when `fastapi-offline` is not installed (or lacks them)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).resolve().parent / "static"
    return folder if all((folder / name).is_file() for name in ASSETS) else None


def fallback_page(openapi_url: str, title: str) -> str:
    url = html.escape(openapi_url, quote=True)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)} - API docs</title></head>
<body>
<h1>{html.escape(title)} API</h1>
<p>The interactive docs (Swagger UI) are not installed on this server: install the
<code>serve</code> extra (<code>pip install 'stagegraph[serve]'</code>, which brings
<code>{ASSETS_PACKAGE}</code>) and restart it.</p>
<p>The API's schema is at <a href="{url}">{url}</a> (OpenAPI 3.1, JSON); the README's section
<em>{README_SECTION}</em> describes every route with examples.</p>
</body></html>
"""


def install_docs(app: FastAPI, assets: Path | None = None) -> bool:
    """Add `/docs` to `app` (built with `docs_url=None`): Swagger UI from local files when `assets`
    (default: `swagger_assets()`) has them, else the fallback page. True when Swagger UI is served."""
    from fastapi.staticfiles import StaticFiles

    assets = swagger_assets() if assets is None else assets
    openapi_url = app.openapi_url or "/openapi.json"
    if assets is None:
        @app.get(DOCS_URL, include_in_schema=False)
        async def docs_fallback(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            return HTMLResponse(fallback_page(f"{root}{openapi_url}", app.title))

        return False

    app.mount(STATIC_URL, StaticFiles(directory=assets), name="docs-static")

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            # no call to validator.swagger.io (the page would try to fetch a badge from it)
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )

    return True
