"""Regenerate the committed gRPC stubs from proto/*.proto, or check that they match.

    python proto/generate.py          # rewrite proto/paas_pb2*.py(i)
    python proto/generate.py --check  # exit 1 if the committed stubs are stale

protoc is run on a copy laid out as paas/proto/ so that the generated modules
import each other as `paas.proto.*`, the import name of this folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent


def generate(out: Path) -> list[Path]:
    """Write the stubs for every .proto of this folder under `out`; return their paths."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        (src / "paas" / "proto").mkdir(parents=True)
        protos = sorted(HERE.glob("*.proto"))
        for proto in protos:
            shutil.copy(proto, src / "paas" / "proto" / proto.name)
        gen = Path(tmp) / "gen"
        gen.mkdir()
        include = str(Path(protoc.__file__).parent / "_proto")
        args = [
            "protoc",
            f"-I{src}",
            f"-I{include}",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            f"--mypy_out={gen}",
            f"--mypy_grpc_out={gen}",
            *(f"paas/proto/{p.name}" for p in protos),
        ]
        # protoc finds the mypy plugins on PATH; they sit beside this interpreter.
        bindir = str(Path(sys.executable).parent)
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for path in sorted((gen / "paas" / "proto").iterdir()):
            target = out / path.name
            shutil.copy(path, target)
            written.append(target)
        return written


def main() -> None:
    if "--check" in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            stale = [
                p.name
                for p in generate(Path(tmp))
                if not (HERE / p.name).exists() or (HERE / p.name).read_bytes() != p.read_bytes()
            ]
        if stale:
            print(f"generated stubs are stale: {', '.join(stale)}; run `make proto`")
            raise SystemExit(1)
        print("generated stubs match the .proto files")
        return
    for path in generate(HERE):
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
