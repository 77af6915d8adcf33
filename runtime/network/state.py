"""Network records and address allocations in the state dir: one JSON file under an flock.

Every change happens inside `NetworkState.locked()`: the lock serializes threads and
processes alike (flock belongs to the open file description, and each call opens its own),
and the file is rewritten atomically (temp file, fsync, rename) so a crash never leaves
half a file. Records are written *before* anything is created in the kernel, so after a
crash `cleanup_stale` knows what to remove.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cellbox.runtime import atomicfile
from cellbox.runtime.errors import CellboxError, Conflict

STATE_FILE = "network.json"
LOCK_FILE = "network.lock"


class AddressExhausted(Conflict):
    """No free address is left in the bridge subnet."""


class NetworkState:
    """The records of every container's network, keyed by container id."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"version": 1, "containers": {}}
        except (OSError, ValueError) as e:
            raise CellboxError(f"cannot read network state {self.path}: {e}") from None
        data.setdefault("containers", {})
        return data

    def _write(self, data: dict) -> None:
        atomicfile.write_json(self.path, data, 0o600, indent=1, sort_keys=True)

    @contextmanager
    def locked(self) -> Iterator[dict]:
        """Hold the lock; yield the data; write it back if the block changed it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)

    def snapshot(self) -> dict:
        """A consistent read of all records."""
        with self.locked() as data:
            return json.loads(json.dumps(data))


def allocate(data: dict, bridge: str, subnet: ipaddress.IPv4Network) -> str:
    """The lowest free host address of `subnet` (the first one is the gateway's)."""
    used = {
        rec["ip"]
        for rec in data["containers"].values()
        if rec.get("bridge") == bridge and rec.get("ip")
    }
    hosts = subnet.hosts()
    next(hosts)  # gateway
    for addr in hosts:
        if str(addr) not in used:
            return str(addr)
    raise AddressExhausted(
        f"no free address left in subnet {subnet} of bridge {bridge} ({len(used)} in use)"
    )
