"""The OpenAI-compatible HTTP server behind `tameshi serve` (needs the `serve` extra: fastapi, uvicorn).

Nothing here is imported by `import tameshi`; `create_app` pulls in FastAPI only when called for.
"""
