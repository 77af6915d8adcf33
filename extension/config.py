"""The extension's settings, one traitlets class: `c.Cellbox.<name>` in jupyter_server_config.

Per-notebook settings (`metadata.cellbox` in the .ipynb) may ask for more or less than
the defaults, but never more than the `max_*` caps: asked limits above a cap are lowered
to the cap (and the container's record says so); an image or network not allowed is an
error (the kernel does not start; the REST API answers 403).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os

from traitlets import Bool, Enum, Float, Int, List, Unicode, default
from traitlets.config import Configurable


class Cellbox(Configurable):
    """Settings for cellbox's Jupyter server extension."""

    default_image = Unicode("cellbox/python:3.11", help="Image for a notebook that names none.").tag(config=True)
    allowed_images = List(
        Unicode(),
        default_value=[],
        help="fnmatch patterns of images a notebook may name in metadata.cellbox.image "
        "(the default image is always allowed; ['*'] allows every local image).",
    ).tag(config=True)
    memory_limit = Unicode("1g", help="Memory limit of a notebook's container.").tag(config=True)
    max_memory = Unicode("4g", help="Highest memory a notebook's metadata may ask for.").tag(config=True)
    cpu_limit = Float(1.0, help="CPUs of a notebook's container (0 = no limit).").tag(config=True)
    max_cpus = Float(2.0, help="Highest CPUs a notebook's metadata may ask for.").tag(config=True)
    pids_limit = Int(512, help="Most processes in a notebook's container.").tag(config=True)
    max_pids = Int(1024, help="Highest pids limit a notebook's metadata may ask for.").tag(config=True)
    require_limits = Bool(
        False,
        help="Refuse to start a notebook's container without cgroup limits (a server run by an ordinary "
        "user with no cgroup delegated to them: `cellbox system delegate USER`, as root, gives one).",
    ).tag(config=True)
    disk_limit = Unicode(
        "10g", help="Size of a notebook's writable layer, a filesystem of its own ('' = the host's disk, unlimited)."
    ).tag(config=True)
    max_snapshots = Int(
        20, help="Most snapshots a notebook's container may keep (0 = no limit); the tenant removes its own to make room."
    ).tag(config=True)
    snapshot_quota = Unicode(
        "5g", help="Most disk a notebook's snapshots may keep, holes of sparse files not counted ('' = no limit)."
    ).tag(config=True)
    nofile_limit = Int(
        help="Open files per process in a notebook's container (RLIMIT_NOFILE; default: "
        "what max_pids leaves of max_open_files_share of the host's file table, at most 1024)."
    ).tag(config=True)
    max_open_files_share = Float(
        0.125,
        help="Most of the host's file table (fs.file-max) one notebook may hold: pids limit x "
        "nofile_limit above it is refused, for max_pids too, when the server starts.",
    ).tag(config=True)
    notebook_dir = Enum(
        ["rw", "ro", "none"],
        "rw",
        help="The notebook's folder in its container, at /notebook (the kernel's working directory): "
        "rw, ro, or none (not mounted). metadata.cellbox.notebook_dir may ask for less, never more. "
        "Files the container's root writes there are owned by the user the server runs as.",
    ).tag(config=True)
    volumes = List(
        Unicode(),
        default_value=[],
        help="More mounts for every notebook's container, as `cellbox run -v`: 'HOSTPATH:/DEST[:ro]' "
        "(a course's data set) or 'NAME:/DEST' (a named volume: a shared scratch dir, a pip cache).",
    ).tag(config=True)
    volume_roots = List(
        Unicode(),
        default_value=[],
        help="Host dirs beneath which metadata.cellbox.volumes may name sources: 'PATH' (read-only "
        "mounts only) or 'PATH:rw'. Empty (default): a notebook may ask for no host path.",
    ).tag(config=True)
    network = Enum(["none", "bridge"], "none", help="Network of a notebook's container.").tag(config=True)
    allowed_networks = List(Unicode(), default_value=["none"], help="Networks metadata may ask for.").tag(config=True)
    idle_timeout = Int(3600, help="Seconds without a kernel or kernel activity before a container is culled (0 = never).").tag(config=True)
    cull_interval = Float(60.0, help="Seconds between two looks for idle containers.").tag(config=True)
    cull_action = Enum(["stop", "remove"], "stop", help="What culling does to an idle container.").tag(config=True)
    max_containers = Int(50, help="Most running notebook containers at once (0 = no limit).").tag(config=True)
    state_root = Unicode("", help="cellbox state root (default $CELLBOX_ROOT or /var/lib/cellbox).").tag(config=True)
    cgroup_parent = Unicode("", help="Parent cgroup of the containers (default $CELLBOX_CGROUP_PARENT or 'cellbox').").tag(config=True)
    allow_commit = Bool(True, help="Whether users may commit containers into images.").tag(config=True)
    allow_push = Bool(True, help="Whether users may push and pull images to and from registries.").tag(config=True)
    insecure_registries = List(Unicode(), default_value=[], help="Registries reached over plain HTTP.").tag(config=True)
    max_request_body = Int(
        1 << 20, help="Largest REST request body in bytes; a larger one gets 413 before it is read or parsed."
    ).tag(config=True)
    remove_on_delete = Bool(True, help="Remove a notebook's container when the notebook is deleted.").tag(config=True)
    # Why "stop" is the default: a notebook's container is its machine. What a user did in
    # it (`%pip install`, files written outside the notebook's folder) is expected to be
    # there after the server is restarted, as it is after a kernel restart; Docker's
    # `--rm`-like "remove" would throw that away at every Ctrl-C. "keep" would leave
    # kernels' containers running (memory, CPU) with no server to reach them. A stopped
    # container costs only its disk, is one per notebook (not per run: the next start finds
    # it by its labels and starts it again when the notebook's kernel starts), and goes
    # when its notebook is deleted, or at the next start if the notebook went meanwhile.
    # It shows in `cellbox ps -a` as "Exited (143)" (stopped by SIGTERM), named nb-<notebook>.
    on_shutdown = Enum(
        ["stop", "keep", "remove"],
        "stop",
        help="What a server that stops cleanly does with its notebooks' containers. "
        "stop (default): stopped, kept on disk with what was installed in them, and started "
        "again when the notebook's kernel starts on the next run; keep: left running; "
        "remove: removed, like Docker's --rm (the next run starts each notebook afresh).",
    ).tag(config=True)
    on_restart = Enum(["reattach", "remove"], "reattach", help="What a starting server does with the containers a previous run of it left.").tag(config=True)
    allow_unisolated_kernels = Bool(
        True,
        help="Whether the server offers kernels that do not run in a cellbox container "
        "(the plain 'Python 3 (ipykernel)' and any other non-cellbox kernelspec). False: "
        "only kernelspecs that select the cellbox provisioner are listed or can be started, "
        "and the default kernel becomes 'cellbox'. `cellbox lab` sets False; a plain jupyter "
        "server that merely loads the extension keeps True, so adding the extension to an "
        "existing server hides none of its users' kernels.",
    ).tag(config=True)
    isolation = Enum(["auto", "on", "off"], "auto", help="'auto': probe whether namespaces are allowed; 'off': degraded mode (kernels unisolated).").tag(config=True)
    server_id = Unicode(help="This server's identity in container labels (default: from its root_dir).").tag(config=True)
    # What one kernel's output may cost the server (extension/limits.py says why).
    max_message_bytes = Int(
        16 << 20,
        help="Largest frame the server accepts from a kernel (ZMQ_MAXMSGSIZE: libzmq drops a larger one "
        "unread and closes that socket's connection for good, so the browser that was sent it sees no "
        "more output until it reconnects; the cellbox kernel cuts stdout/stderr into 256 KiB pieces, "
        "so only one display output that large, or a forged message, meets it). 0 = no limit.",
    ).tag(config=True)
    kernel_queue_messages = Int(
        4,
        help="Messages the server queues per kernel socket before the kernel's side holds them (ZMQ_RCVHWM): "
        "with max_message_bytes, bounds what a kernel that outruns the server costs it. 0 = zmq's default.",
    ).tag(config=True)
    limit_rate = Bool(True, help="Default of ZMQChannelsWebsocketConnection.limit_rate (if not configured there).").tag(config=True)
    iopub_msg_rate_limit = Float(
        1000.0, help="Default of ZMQChannelsWebsocketConnection.iopub_msg_rate_limit (msgs/s)."
    ).tag(config=True)
    iopub_data_rate_limit = Float(
        1_000_000.0, help="Default of ZMQChannelsWebsocketConnection.iopub_data_rate_limit (bytes/s)."
    ).tag(config=True)
    rate_limit_window = Float(3.0, help="Default of ZMQChannelsWebsocketConnection.rate_limit_window (s).").tag(config=True)
    offline_buffer_bytes = Int(
        8 << 20, help="Most bytes of a kernel's messages kept for a browser that is away (oldest dropped first)."
    ).tag(config=True)
    offline_buffer_messages = Int(
        10_000, help="Most messages kept for a browser that is away (oldest dropped first)."
    ).tag(config=True)

    @default("server_id")
    def _server_id(self) -> str:
        root = getattr(self.parent, "root_dir", None) or os.getcwd()
        return hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16]

    @default("nofile_limit")
    def _nofile_limit(self) -> int:
        from cellbox.runtime.engine import open_files_per_process

        return open_files_per_process(max(self.pids_limit, self.max_pids), self.max_open_files_share)

    def check_open_files(self) -> None:
        """Refuse (InvalidArgument) limits that let one notebook fill the host's file table."""
        from cellbox.runtime.engine import check_open_files_share

        for name, pids in (("pids_limit", self.pids_limit), ("max_pids", self.max_pids)):
            check_open_files_share(pids, self.nofile_limit, self.max_open_files_share, what=f"c.Cellbox.{name}")

    def image_allowed(self, image: str) -> bool:
        """The default image, or one matching an allowed pattern."""
        if image == self.default_image:
            return True
        return any(fnmatch.fnmatchcase(image, pat) for pat in self.allowed_images)
