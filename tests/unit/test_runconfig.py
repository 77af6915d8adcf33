"""What `cellbox run` options become in the OCI config (runtime/runconfig.py), with Docker's
meaning: the image's Entrypoint, Cmd, Env, WorkingDir and User as Docker applies them, env,
user, workdir, hostname, volumes, limits, rlimits, network and user namespaces, security
options. No root needed: the config is only built, never run."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
from cellbox.runtime import spec
from cellbox.runtime.errors import InvalidArgument
from cellbox.runtime.runconfig import (
    RunOptions,
    build_config,
    merge_env,
    parse_env,
    parse_user,
    parse_volume,
)

CID = "c0ffee" * 10 + "abcd"
IMAGE = {
    "Entrypoint": ["/entry"],
    "Cmd": ["serve", "--port", "80"],
    "Env": ["PATH=/opt/bin:/bin", "LANG=C.UTF-8"],
}


def config(tmp_path: Path, image: dict | None = None, **kw) -> dict:
    """build_config for RunOptions(**kw) over an image with config `image` (default IMAGE)."""
    extra = {k: kw.pop(k) for k in ("joined_netns", "userns_base", "writable") if k in kw}
    return build_config(
        tmp_path,
        CID,
        RunOptions(image="img", **kw),
        image_config=IMAGE if image is None else image,
        lowers=["/layers/top", "/layers/base"],
        cgroup_parent="/cellbox/",
        **extra,
    )


def env_of(cfg: dict) -> dict[str, str]:
    return dict(e.split("=", 1) for e in cfg["process"]["env"])


# -- command: the image's Entrypoint and Cmd -------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "args"),
    [
        ({}, ["/entry", "serve", "--port", "80"]),  # ENTRYPOINT + CMD
        ({"command": ["sh"]}, ["/entry", "sh"]),  # arguments replace CMD, keep ENTRYPOINT
        (
            {"entrypoint": ["/bin/sh", "-c"]},
            ["/bin/sh", "-c"],
        ),  # --entrypoint drops the image's CMD too
        ({"entrypoint": ["/bin/sh"], "command": ["-c", "id"]}, ["/bin/sh", "-c", "id"]),
        ({"entrypoint": [], "command": ["id"]}, ["id"]),  # --entrypoint "": none at all
    ],
)
def test_command_is_entrypoint_then_cmd_as_docker_builds_it(tmp_path, kw, args):
    assert config(tmp_path, **kw)["process"]["args"] == args


def test_no_command_at_all_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="no command specified"):
        config(tmp_path, image={})
    with pytest.raises(InvalidArgument, match="no command specified"):
        config(tmp_path, entrypoint=[])  # "" entrypoint and no arguments: nothing to run


# -- env -------------------------------------------------------------------------------------
def test_env_layers_default_path_image_hostname_then_the_callers(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_CALLER", "yes")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = config(tmp_path, env=["LANG=de_DE", "A=1=2", "FROM_CALLER", "NOT_SET_ANYWHERE", "EMPTY="])
    env = env_of(cfg)
    assert env["PATH"] == "/opt/bin:/bin"  # the image's PATH replaces the default
    assert env["LANG"] == "de_DE"  # -e wins over the image
    assert env["A"] == "1=2" and env["EMPTY"] == ""
    assert env["FROM_CALLER"] == "yes"  # -e NAME passes the caller's value...
    assert "NOT_SET_ANYWHERE" not in env  # ...or nothing when it has none
    assert env["HOSTNAME"] == CID[:12]
    assert "TERM" not in env
    assert [e.split("=")[0] for e in cfg["process"]["env"]][:3] == [
        "PATH",
        "LANG",
        "HOSTNAME",
    ]  # first seen, first


def test_env_defaults_and_tty(tmp_path):
    env = env_of(config(tmp_path, image={"Cmd": ["sh"]}, tty=True, hostname="box"))
    assert env == {"PATH": spec.DEFAULT_PATH, "HOSTNAME": "box", "TERM": "xterm"}


def test_env_helpers():
    assert merge_env(["A=1", "B=2"], ["A=3", "C="]) == ["A=3", "B=2", "C="]
    with pytest.raises(InvalidArgument, match="invalid environment variable"):
        parse_env(["=x"])


# -- user, workdir, hostname -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("user", "spec_user", "name"),
    [
        ("1000", {"uid": 1000, "gid": 0}, None),
        ("1000:100", {"uid": 1000, "gid": 100}, None),
        ("nobody", {"uid": 0, "gid": 0}, "nobody"),  # a name is resolved inside, by the init
        ("nobody:staff", {"uid": 0, "gid": 0}, "nobody:staff"),
        ("1000:staff", {"uid": 0, "gid": 0}, "1000:staff"),
    ],
)
def test_user_numeric_in_the_spec_names_resolved_inside(tmp_path, user, spec_user, name):
    assert parse_user(user) == (spec_user, name)
    cfg = config(tmp_path, user=user)
    assert cfg["process"]["user"] == spec_user
    assert cfg["annotations"].get(spec.ANN_USER) == name


def test_user_from_the_image_unless_given(tmp_path):
    image = {"Cmd": ["sh"], "User": "1000"}
    assert config(tmp_path, image=image)["process"]["user"] == {"uid": 1000, "gid": 0}
    assert config(tmp_path, image=image, user="0")["process"]["user"] == {"uid": 0, "gid": 0}
    assert config(tmp_path, image={"Cmd": ["sh"]})["process"]["user"] == {
        "uid": 0,
        "gid": 0,
    }  # root
    with pytest.raises(InvalidArgument, match="invalid user"):
        parse_user(":100")


def test_a_user_that_is_not_root_keeps_only_the_bounding_capabilities(tmp_path):
    caps = config(tmp_path, user="1000")["process"]["capabilities"]
    assert "CAP_CHOWN" in caps["bounding"] and caps["effective"] == caps["permitted"] == []
    root = config(tmp_path)["process"]["capabilities"]
    assert "CAP_CHOWN" in root["effective"] and "CAP_SYS_ADMIN" not in root["bounding"]
    assert (
        "CAP_SYS_ADMIN"
        in config(tmp_path, cap_add=["SYS_ADMIN"])["process"]["capabilities"]["effective"]
    )
    assert (
        "CAP_CHOWN"
        not in config(tmp_path, cap_drop=["chown"])["process"]["capabilities"]["bounding"]
    )


@pytest.mark.parametrize(
    ("image", "workdir", "cwd"),
    [
        ({}, None, "/"),
        ({"WorkingDir": "/app"}, None, "/app"),
        ({"WorkingDir": "/app"}, "/work", "/work"),
    ],
)
def test_workdir_given_else_the_images_else_root(tmp_path, image, workdir, cwd):
    assert (
        config(tmp_path, image={"Cmd": ["sh"], **image}, workdir=workdir)["process"]["cwd"] == cwd
    )


def test_a_relative_workdir_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="needs to be an absolute path"):
        config(tmp_path, workdir="app")


def test_hostname_given_else_the_short_id_with_its_etc_files(tmp_path):
    assert config(tmp_path)["hostname"] == CID[:12]
    cfg = config(tmp_path, hostname="lab")
    assert cfg["hostname"] == "lab"
    binds = {m["destination"]: m for m in cfg["mounts"] if m["type"] == "bind"}
    for name in ("hostname", "hosts", "resolv.conf"):
        assert binds[f"/etc/{name}"]["source"] == str(tmp_path / name)


# -- volumes ---------------------------------------------------------------------------------
def test_volumes_are_private_recursive_binds(tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (tmp_path / "link").symlink_to(src)
    cfg = config(
        tmp_path, volumes=[f"{src}:/data", f"{tmp_path}/link:/ro//x/:ro,nosuid,nodev,noexec"]
    )
    rw, ro = cfg["mounts"][-2:]
    assert rw == {
        "destination": "/data",
        "type": "bind",
        "source": str(src),
        "options": ["rbind", "rprivate", "rw", "nosuid", "nodev"],  # binds are nosuid,nodev
    }
    assert ro["destination"] == "/ro/x" and ro["source"] == str(
        src
    )  # normalised, the link resolved
    assert ro["options"] == ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"]


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        ("/tmp", "want SRC:DST"),
        ("/tmp:/a:ro:x", "want SRC:DST"),
        (":/a", "want SRC:DST"),
        ("/tmp:/a:rw,ro", "ro and rw together"),
        ("/tmp:/a:exec", "invalid volume option 'exec'"),
        ("tmp:/a", "both paths must be absolute"),
        ("/tmp:a", "both paths must be absolute"),
        ("/no/such/dir/here:/a", "does not exist"),
        ("/tmp:/", "cannot be mounted on /"),
        ("/tmp:/a/..", "cannot be mounted on /"),
    ],
)
def test_bad_volumes_are_refused(volume, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_volume(volume)


# -- limits: linux.resources and process.rlimits ---------------------------------------------
def test_no_limits_leave_an_empty_memory_section_and_the_default_devices(tmp_path):
    res = config(tmp_path)["linux"]["resources"]
    assert res == {"devices": spec.DEFAULT_DEVICE_RULES, "memory": {}}  # empty memory: swap off


def test_limits_become_linux_resources(tmp_path):
    res = config(
        tmp_path, memory="256m", memory_swap="512m", cpus=1.5, cpu_shares=512, pids_limit=100
    )["linux"]["resources"]
    assert res["memory"] == {"limit": 256 << 20, "swap": 512 << 20}
    assert res["cpu"] == {"quota": 150000, "period": 100000, "shares": 512}
    assert res["pids"] == {"limit": 100}
    unlimited = config(tmp_path, memory=64 << 20, memory_swap=-1, pids_limit=-1)["linux"][
        "resources"
    ]
    assert unlimited["memory"] == {"limit": 64 << 20, "swap": -1} and unlimited["pids"] == {
        "limit": -1
    }
    assert "cpu" not in unlimited


def test_nofile_is_dockers_unless_a_ulimit_says_otherwise(tmp_path):
    nofile = min(1048576, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    assert config(tmp_path)["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "soft": nofile, "hard": nofile}
    ]
    rl = config(tmp_path, ulimits=["nproc=10:20", "nofile=64:128", "core=-1"])["process"]["rlimits"]
    assert rl == [
        {"type": "RLIMIT_CORE", "soft": 2**64 - 1, "hard": 2**64 - 1},
        {"type": "RLIMIT_NOFILE", "soft": 64, "hard": 128},
        {"type": "RLIMIT_NPROC", "soft": 10, "hard": 20},
    ]


def test_the_engine_refuses_limits_in_runoptions_words_never_a_flag(tmp_path):
    for kw, message in (
        ({"memory": "1k"}, "memory = '1k': minimum memory limit allowed is 6MB"),
        ({"memory_swap": "1g"}, "memory_swap = '1g': needs a memory"),
        ({"pids_limit": 0}, "pids_limit = 0: must be a positive integer, or -1 for no limit"),
        ({"cpus": 0.0}, "cpus = 0.0: must be positive"),
        ({"storage_opts": ["size=1k"]}, "storage_opts = 'size=1k': at least 16m"),
    ):
        with pytest.raises(InvalidArgument) as e:
            config(tmp_path, **kw)
        assert str(e.value) == message and "--" not in str(e.value)


# -- root, cgroup, overlay -------------------------------------------------------------------
def test_rootfs_overlay_and_cgroup(tmp_path):
    cfg = config(tmp_path, read_only=True)
    assert cfg["root"] == {"path": str(tmp_path / "merged"), "readonly": True}
    assert config(tmp_path)["root"]["readonly"] is False
    assert cfg["linux"]["cgroupsPath"] == f"cellbox/{CID}"
    ann = cfg["annotations"]
    assert ann[spec.ANN_LOWER] == "/layers/top:/layers/base"
    assert (ann[spec.ANN_UPPER], ann[spec.ANN_WORK]) == (
        str(tmp_path / "upper"),
        str(tmp_path / "work"),
    )
    capped = config(tmp_path, writable=tmp_path / "rw")[
        "annotations"
    ]  # --storage-opt size=: its own fs
    assert (capped[spec.ANN_UPPER], capped[spec.ANN_WORK]) == (
        str(tmp_path / "rw/upper"),
        str(tmp_path / "rw/work"),
    )


# -- network and user namespaces, sysctls ---------------------------------------------------
def namespaces(cfg: dict) -> dict[str, dict]:
    return {n["type"]: n for n in cfg["linux"]["namespaces"]}


@pytest.mark.parametrize("network", ["none", "bridge"])
def test_a_network_namespace_of_its_own_with_unprivileged_ping(tmp_path, network):
    cfg = config(tmp_path, network=network, sysctls={"net.ipv4.ip_forward": "0"})
    assert namespaces(cfg)["network"] == {"type": "network"}
    assert cfg["linux"]["sysctl"] == {
        "net.ipv4.ip_forward": "0",
        "net.ipv4.ping_group_range": "0 2147483647",
    }
    mine = config(tmp_path, network=network, sysctls={"net.ipv4.ping_group_range": "1 0"})
    assert mine["linux"]["sysctl"]["net.ipv4.ping_group_range"] == "1 0"  # the caller's wins


def test_host_and_container_networks(tmp_path):
    assert "network" not in namespaces(config(tmp_path, network="host"))
    joined = config(tmp_path, network="container:db", joined_netns="/proc/42/ns/net")
    assert namespaces(joined)["network"] == {"type": "network", "path": "/proc/42/ns/net"}
    with pytest.raises(InvalidArgument, match="no namespace to join"):
        config(tmp_path, network="container:db")
    with pytest.raises(InvalidArgument, match="unknown network mode"):
        config(tmp_path, network="overlay")


def test_a_user_namespace_maps_container_root_to_its_host_range(tmp_path):
    cfg = config(tmp_path, userns_base=200_000)
    assert "user" in namespaces(cfg)
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 200_000, "size": 65536}]
    assert cfg["linux"]["gidMappings"] == cfg["linux"]["uidMappings"]
    assert cfg["annotations"][spec.ANN_IDMAP] == "true"
    assert cfg["linux"]["sysctl"]["net.ipv4.ping_group_range"] == "0 65535"  # only the gids it maps
    plain = config(tmp_path)
    assert "user" not in namespaces(plain) and spec.ANN_IDMAP not in plain["annotations"]


# -- security options ------------------------------------------------------------------------
def test_security_options_as_docker_reads_them(tmp_path):
    default = config(tmp_path)
    assert default["process"]["noNewPrivileges"] is True and "seccomp" in default["linux"]
    assert "seccomp" not in config(tmp_path, security_opt=["seccomp=unconfined"])["linux"]
    assert (
        config(tmp_path, security_opt=["no-new-privileges:false"])["process"]["noNewPrivileges"]
        is False
    )
    assert (
        config(tmp_path, security_opt=["no-new-privileges=true"])["process"]["noNewPrivileges"]
        is True
    )
    for bad, message in (
        ("seccomp=", "unconfined or =FILE"),
        ("apparmor=x", "apparmor=x"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            config(tmp_path, security_opt=[bad])
