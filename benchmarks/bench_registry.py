"""Push and pull of a 5 MB and a 100 MB image: cellbox's registry client vs skopeo,
to the same local distribution registry, alternating, medians and ratios.

    python benchmarks/bench_registry.py [--trials N] [--sizes 5,100]

Fair play: every trial starts a fresh registry (skopeo's blob-info cache lives in
/var/lib/containers/cache for root and would otherwise turn its pushes into
cross-repository mounts; cellbox's blob-source record is cleared too), so both upload
every byte; every pull goes into an empty store/layout.
cellbox is timed in process (as the server extension calls it); skopeo as a process.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import benchlib

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # helpers.registry

from cellbox.runtime.images.layout import Layout  # noqa: E402
from cellbox.runtime.images.registry import pull, push  # noqa: E402
from cellbox.runtime.images.registry.transfer import SOURCES_FILE  # noqa: E402
from cellbox.runtime.images.store import ImageStore  # noqa: E402
from helpers.registry import OCI_CONFIG, OCI_LAYER_GZ, OCI_MANIFEST, start_registry  # noqa: E402


def make_layer(mb: int) -> tuple[bytes, str]:
    """A gzip tar layer holding `mb` MB of random (incompressible) bytes."""
    import hashlib

    data = os.urandom(mb * 1_000_000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("data.bin")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest()


def write_image(layout: Layout, blob: bytes, diff_id: str, label: str) -> tuple[dict, dict, dict]:
    digest, size = layout.write_blob(blob)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"b": label}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    cdesc = layout.write_json(config, OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": cdesc,
        "layers": [{"mediaType": OCI_LAYER_GZ, "digest": digest, "size": size}],
    }
    return manifest, config, layout.write_json(manifest, OCI_MANIFEST)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--sizes", default="5,100")
    args = ap.parse_args()
    skopeo = shutil.which("skopeo")
    if not skopeo:
        sys.exit("skopeo not installed")
    tmp = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    rows = []
    try:
        for mb in (int(s) for s in args.sizes.split(",")):
            blob, diff_id = make_layer(mb)
            store = ImageStore(tmp / f"store-{mb}")
            src = Layout(tmp / f"skopeo-src-{mb}")
            manifest, config, mdesc = write_image(store.layout, blob, diff_id, str(mb))
            write_image(src, blob, diff_id, str(mb))
            src.set_ref("img", mdesc)
            times: dict[str, list[float]] = {
                k: [] for k in ("push cellbox", "push skopeo", "pull cellbox", "pull skopeo")
            }
            for t in range(args.trials):
                reg = start_registry(tmp / f"registry-{mb}-{t}")
                ours_ref = f"{reg.host}/bench/c{mb}-{t}:1"
                theirs_ref = f"{reg.host}/bench/s{mb}-{t}:1"
                store.add_image(manifest, config, ours_ref)
                home = tmp / f"home-{mb}-{t}"
                home.mkdir()
                env = {**os.environ, "HOME": str(home)}

                def ours_push(ref=ours_ref, store=store):
                    (store.layout.root / SOURCES_FILE).unlink(missing_ok=True)
                    push(store, ref, progress=False)

                def skopeo_push(ref=theirs_ref, env=env, src=src):
                    subprocess.run(
                        [
                            skopeo,
                            "copy",
                            "-q",
                            "--dest-tls-verify=false",
                            f"oci:{src.root}:img",
                            f"docker://{ref}",
                        ],
                        check=True,
                        env=env,
                        capture_output=True,
                    )

                def ours_pull(ref=ours_ref, d=tmp / f"pull-c-{mb}-{t}"):
                    pull(ImageStore(d), ref, progress=False)

                def skopeo_pull(ref=theirs_ref, env=env, d=tmp / f"pull-s-{mb}-{t}"):
                    subprocess.run(
                        [
                            skopeo,
                            "copy",
                            "-q",
                            "--src-tls-verify=false",
                            f"docker://{ref}",
                            f"oci:{d}:img",
                        ],
                        check=True,
                        env=env,
                        capture_output=True,
                    )

                order = [("cellbox", ours_push, ours_pull), ("skopeo", skopeo_push, skopeo_pull)]
                if t % 2:
                    order.reverse()
                for name, p, _ in order:
                    times[f"push {name}"].append(benchlib.timed(p))
                for name, _, q in order:
                    times[f"pull {name}"].append(benchlib.timed(q))
                reg.stop()
                for d in [*tmp.glob(f"pull-*-{mb}-{t}"), tmp / f"registry-{mb}-{t}"]:
                    shutil.rmtree(d, ignore_errors=True)
            for op in ("push", "pull"):
                c = statistics.median(times[f"{op} cellbox"])
                s = statistics.median(times[f"{op} skopeo"])
                rows.append((f"{mb} MB", op, c, s, c / s))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"trials: {args.trials} (medians; cellbox in process, skopeo as a process)")
    print(f"{'image':>7} {'op':>5} {'cellbox s':>10} {'skopeo s':>9} {'ratio':>6}")
    for size, op, c, s, ratio in rows:
        print(f"{size:>7} {op:>5} {c:>10.3f} {s:>9.3f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
