"""/docs served offline: Swagger UI's files from the fastapi-offline package, no CDN, no inline script.

FastAPI's get_swagger_ui_html loads the UI from a CDN and starts it with an inline <script>, which the strict
Content-Security-Policy (script-src 'self', app/api/middleware.py) blocks. This page loads everything from
/docs-static and starts the UI from a small script file; the OpenAPI URL travels in a data attribute.
"""

from __future__ import annotations

import html

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_PREFIX = "/docs-static"

INIT_JS = """\
window.ui = SwaggerUIBundle({
  url: document.getElementById("swagger-ui").dataset.openapiUrl,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis],
});
"""

PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - Swagger UI</title>
<link rel="stylesheet" href="{static}/swagger-ui.css">
<link rel="icon" type="image/png" href="{static}/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script src="{static}/swagger-init.js"></script>
</body>
</html>
"""


def install_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    """Serve Swagger UI at docs_url from local files (create the app with docs_url=None, redoc_url=None)."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = PAGE.format(
            title=html.escape(app.title),
            static=html.escape(root + STATIC_PREFIX),
            openapi_url=html.escape(root + openapi_url),
        )
        return HTMLResponse(page)

    @app.get(f"{STATIC_PREFIX}/swagger-init.js", include_in_schema=False)
    def swagger_init() -> Response:
        return Response(INIT_JS, media_type="text/javascript")

    # After the init route, so that one path is answered by it; the rest are the package's files.
    app.mount(STATIC_PREFIX, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-static")
