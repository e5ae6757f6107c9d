"""The ``?limit=`` every list takes (default 50, max 500)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

Limit = Annotated[int, Query(ge=1, le=500)]
