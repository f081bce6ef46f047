"""`cai serve`: an OpenAI-compatible HTTP API in front of any backend."""

from constitutional.serve.app import create_app

__all__ = ["create_app"]
