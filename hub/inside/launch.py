"""Container side of a CellboxSpawner server: the only file of cellbox.hub mounted into a
student's container (read-only, at /opt/cellbox-hub). Standard library only.

The container has a network of its own that cannot open connections to the host, so the
single-user server reaches the hub's API through a unix socket the hub serves in a
directory bound into this container: this process forks a relay that listens on
127.0.0.1:PORT inside the container (the JUPYTERHUB_API_URL the server is given) and
pipes every connection to that socket, then execs the server's command. The relay exits
when the server does.

Run as: python3 launch.py SOCKET PORT COMMAND [ARGS...]
"""

import os
import socket
import sys
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(listener: socket.socket, path: str) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()  # the hub is down (a restart): the server retries
            upstream.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _watch_parent(parent: int) -> None:
    import time

    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: launch.py SOCKET PORT COMMAND [ARGS...]\n")
        return 2
    path, port, command = argv[0], int(argv[1]), argv[2:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))  # before the server starts: its first call finds it
    listener.listen(64)
    parent = os.getpid()
    if os.fork() == 0:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
        try:
            _serve(listener, path)
        finally:
            os._exit(0)
    listener.close()
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
