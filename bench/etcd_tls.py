"""Benchmark: what TLS (and a user's token) costs the scheduler's etcd calls.

One etcd serves plaintext and TLS (with --client-cert-auth) on two ports at once,
so both are measured against the same server in the same run. For each way in, an
`EtcdClient` (the scheduler's own, scheduler/etcd_client.py) runs guarded txns like
the leader's writes (compare a key's version, put) one after another (round trips
per second) and `--parallel` at a time (throughput). Rounds alternate plaintext and
TLS so that a load change on the machine hits both. Then auth is enabled and both
are measured again with a user (aetcd's token auth). The ratios are over the
plaintext baseline of the same run.

    .venv/bin/python bench/etcd_tls.py                     # 3 rounds of 1000 txns
    .venv/bin/python bench/etcd_tls.py --txns 3000 --rounds 5

Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paas.cli.localcluster import etcd_binary
from paas.common.ports import free_port
from paas.scheduler.etcd_access import EtcdAccess
from paas.scheduler.etcd_client import EtcdClient
from tests.etcd_pki import issue, make_ca


async def txn_rate(client: EtcdClient, count: int, parallel: int) -> float:
    """Guarded txns per second: `parallel` workers, `count` txns in all."""
    key = f"/bench/{parallel}".encode()
    await client.put(key, b"0")

    async def worker(n: int) -> None:
        for i in range(n):
            await client.transaction(
                compare=[client.transactions.version(key) > 0],
                success=[client.transactions.put(key, str(i).encode())],
                failure=[],
            )

    start = time.perf_counter()
    await asyncio.gather(*(worker(count // parallel) for _ in range(parallel)))
    return (count // parallel * parallel) / (time.perf_counter() - start)


async def measure(
    ways: dict[str, tuple[int, EtcdAccess]], txns: int, rounds: int, parallel: int
) -> dict[str, tuple[float, float]]:
    """Median txns/s, sequential and parallel, for each way in."""
    clients = {name: EtcdClient("127.0.0.1", port, 10.0, a) for name, (port, a) in ways.items()}
    sequential: dict[str, list[float]] = {name: [] for name in ways}
    concurrent: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for client in clients.values():  # warm up: connect, handshake, auth
            await txn_rate(client, 50, 1)
        for _ in range(rounds):
            for name, client in clients.items():
                sequential[name].append(await txn_rate(client, txns, 1))
                concurrent[name].append(await txn_rate(client, txns, parallel))
    finally:
        for client in clients.values():
            await client.close()
    return {
        name: (statistics.median(sequential[name]), statistics.median(concurrent[name]))
        for name in ways
    }


def etcdctl(port: int, directory: Path, *args: str) -> None:
    argv = [
        str(Path(etcd_binary()).with_name("etcdctl")),
        f"--endpoints=https://127.0.0.1:{port}",
        f"--cacert={directory / 'bench-ca.crt'}",
        f"--cert={directory / 'root.crt'}",
        f"--key={directory / 'root.key'}",
        *args,
    ]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def start_etcd(
    directory: Path, ca: Path, cert: Path, key: Path, plain: int, secure: int, peer: int
) -> subprocess.Popen[bytes]:
    """One etcd on a plaintext and a TLS (client certificates required) client port."""
    argv = [
            etcd_binary(), "--data-dir", str(directory / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{plain},https://127.0.0.1:{secure}",
            "--advertise-client-urls", f"https://127.0.0.1:{secure}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--client-cert-auth", "--trusted-ca-file", str(ca),
            "--cert-file", str(cert), "--key-file", str(key),
            "--auth-token", "simple", "--unsafe-no-fsync",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txns", type=int, default=1000, help="txns per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-etcd-tls-") as tmp:
        directory = Path(tmp)
        ca = make_ca(directory, "bench-ca")
        server_cert, server_key = issue(ca, directory, "etcd", server=True)
        cert, key = issue(ca, directory, "root")
        plain, secure, peer = free_port(), free_port(), free_port()
        etcd = start_etcd(directory, ca.path, server_cert, server_key, plain, secure, peer)
        try:
            tls = EtcdAccess(ca=ca.path.read_bytes(), cert=cert.read_bytes(), key=key.read_bytes())
            for _ in range(200):  # etcd up: at most 20 s
                try:
                    etcdctl(secure, directory, "endpoint", "health")
                    break
                except subprocess.CalledProcessError:
                    await asyncio.sleep(0.1)
            results = await measure(
                {"plaintext": (plain, EtcdAccess()), "tls": (secure, tls)},
                args.txns, args.rounds, args.parallel,
            )  # fmt: skip
            for step in (
                ["user", "add", "root", "--new-user-password=rootpw"],
                ["user", "grant-role", "root", "root"],
                ["auth", "enable"],
            ):
                etcdctl(secure, directory, *step)
            with_user = await measure(
                {
                    "plaintext+user": (plain, EtcdAccess(user="root", password="rootpw")),
                    "tls+user": (
                        secure,
                        EtcdAccess(tls.ca, tls.cert, tls.key, user="root", password="rootpw"),
                    ),
                },
                args.txns, args.rounds, args.parallel,
            )  # fmt: skip
        finally:
            etcd.kill()
            etcd.wait()

    base_seq, base_par = results["plaintext"]
    print(f"{'way in':<16} {'txn/s 1 at a time':>18} {'ratio':>6} "
          f"{f'txn/s {args.parallel} at a time':>19} {'ratio':>6}")  # fmt: skip
    for name, (seq, par) in {**results, **with_user}.items():
        print(f"{name:<16} {seq:>18.0f} {seq / base_seq:>6.2f} {par:>19.0f} {par / base_par:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
