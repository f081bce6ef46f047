"""`cai collective serve`: the web app that collects statements and votes (issue #8)."""

from constitutional.collective.web.app import create_app
from constitutional.collective.web.store import Store, open_engine

__all__ = ["Store", "create_app", "open_engine"]
