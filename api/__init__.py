"""The FastAPI gateway: starts runs, streams them as AI SDK UI message streams, serves run state."""
