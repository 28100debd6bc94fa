"""The duty-officer API's routes, one module per resource; ``console.api.create_api`` assembles them.

Each module holds one ``APIRouter`` (``router``) of plain functions. What they share — the
site registry, the read-side views, the action path, the token store and its audit trail —
is one ``Context`` (``context.py``) that ``create_api`` builds and the routes receive as a
FastAPI dependency, with the caller's token (``Auth``).
"""
