"""The hub's side of a student server's way to the hub API: a unix socket in a dir bound
into the student's container, every connection piped to the hub's API address. It lives
in the hub's event loop; a restarted hub serves the same path again (the container sees
the dir, so a new socket at the same path is what it reaches)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class ApiRelay:
    """Unix socket `path` -> TCP `target` (the hub's API)."""

    def __init__(self, path: Path, target: tuple[str, int]) -> None:
        self.path, self.target = Path(path), target
        self._server: asyncio.base_events.Server | None = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def start(self) -> None:
        """Listen (replacing a socket a previous hub left at the path)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        # the container's jovyan is an unprivileged host id: it must be able to connect
        os.chmod(self.path, 0o666)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
