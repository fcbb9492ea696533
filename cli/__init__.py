"""The `paas` command line.

gRPC's core logs each failed TLS handshake at INFO on stderr (`Handshake failed with
error ...`); a refused command must be one line, so unless the user asks otherwise,
gRPC says only its errors. Set here, before anything of the CLI imports grpc.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
