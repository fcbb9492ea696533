"""The `paas` command line.

gRPC's core reads GRPC_VERBOSITY once, when it is first loaded, and otherwise logs
each failed TLS handshake (to etcd, say) at INFO on stderr; the CLI and its daemons
print one line of their own instead. Set here, before any gRPC import.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
