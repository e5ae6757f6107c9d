"""A JSON response encoded with orjson (FastAPI's own ORJSONResponse is deprecated)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from tolstoy import jsonutil


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return jsonutil.dumpb(content)
