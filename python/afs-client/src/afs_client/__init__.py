"""Client for ``afs serve``: log a model's calls and feedback, ask which model serves a
request, read statistics.

* `AfsClient`: synchronous, thread-safe, kept-alive connections.
* `AsyncAfsClient`: the same calls as coroutines, for asyncio servers.
* `BatchLogger`: logging off the request path, batched by a background thread from a
  bounded queue, flushed at exit.
* `AfsError`: the one exception every failure raises.
"""

from ._async import AsyncAfsClient
from ._batch import BatchLogger, LoggerStats
from ._client import AfsClient
from ._errors import AfsError
from ._wire import VERSION as __version__

__all__ = ["AfsClient", "AsyncAfsClient", "BatchLogger", "LoggerStats", "AfsError", "__version__"]
