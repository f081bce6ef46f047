"""Scale-out: run a stage's model calls in this process or over a Ray cluster.

`executor_backend(ExecutorConfig(kind="ray", workers=4), "local", "embedded", {...})` yields a
cached backend like `make_backend` does; Ray loads lazily, only when asked for.
"""

from constitutional.scale.executor import EXECUTORS, ExecutorConfig, executor_backend

__all__ = ["EXECUTORS", "ExecutorConfig", "executor_backend"]
