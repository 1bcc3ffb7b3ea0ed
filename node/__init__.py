"""fednode: a node of the electronic-supervision (电子监察) federation tree."""

import os

__version__ = "0.1.0"

# gRPC's C-core logs to file descriptor 2 by itself (glog lines, not our JSON): only its errors, unless
# the environment asks for more (GRPC_VERBOSITY=DEBUG GRPC_TRACE=...). It must be set before grpc is
# imported, and every fednode entry point imports this package first (node/runtime/logging.py).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
