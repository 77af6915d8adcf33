"""Network parsing, /etc files, address allocation and the nft table text: no privileges."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os

import pytest
from cellbox.runtime.errors import Conflict, InvalidArgument
from cellbox.runtime.network import (
    AddressExhausted,
    NetworkManager,
    PortMapping,
    etc_hosts,
    nft,
    parse_network,
    parse_publish,
    resolv_conf,
)
from cellbox.runtime.network.manager import parse_subnet
from cellbox.runtime.network.state import NetworkState, allocate


@pytest.mark.parametrize("mode", ["none", "bridge", "host"])
def test_parse_network_modes(mode):
    assert parse_network(mode).mode == mode


def test_parse_network_default_and_container():
    assert parse_network("").mode == "none"
    spec = parse_network("container:db-1")
    assert (spec.mode, spec.container, spec.netns_path) == ("container", "db-1", None)


@pytest.mark.parametrize("bad", ["bogus", "Bridge", "container:", "container:../x", "none2"])
def test_parse_network_rejects(bad):
    with pytest.raises(InvalidArgument):
        parse_network(bad)


def test_parse_network_message():
    with pytest.raises(InvalidArgument, match="^unknown network mode: bogus$"):
        parse_network("bogus")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8080:80", PortMapping(8080, 80, "tcp", "")),
        ("8080:80/udp", PortMapping(8080, 80, "udp", "")),
        ("127.0.0.1:8080:80/tcp", PortMapping(8080, 80, "tcp", "127.0.0.1")),
        ("0.0.0.0:53:53/UDP", PortMapping(53, 53, "udp", "")),
        ("65535:1", PortMapping(65535, 1, "tcp", "")),
    ],
)
def test_parse_publish(text, expected):
    assert parse_publish(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "80",
        "0:80",
        "8080:0",
        "70000:80",
        "a:80",
        "8080:80/sctp",
        "1.2.3:80:80",
        "::1:80:80",
        "1:2:3:4",
        "8080:-1",
        "",
    ],
)
def test_parse_publish_rejects(bad):
    with pytest.raises(InvalidArgument):
        parse_publish(bad)


def test_overlaps():
    a = parse_publish("8080:80")
    assert a.overlaps(parse_publish("127.0.0.1:8080:81"))
    assert not a.overlaps(parse_publish("8080:80/udp"))
    assert not parse_publish("127.0.0.1:8080:80").overlaps(parse_publish("127.0.0.2:8080:80"))


def test_etc_hosts():
    text = etc_hosts("nb.example.org", "10.88.0.5")
    assert "10.88.0.5\tnb.example.org nb\n" in text
    assert text.startswith("127.0.0.1\tlocalhost\n")
    none = etc_hosts("nb", None)
    assert none.startswith("127.0.0.1\tlocalhost nb\n")
    assert "10." not in none
    with pytest.raises(InvalidArgument):
        etc_hosts("bad_name!", "10.88.0.5")


def test_resolv_conf_drops_loopback(tmp_path):
    f = tmp_path / "resolv.conf"
    f.write_text(
        "# comment\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.1.2.3\n"
        "search example.org\noptions edns0 trust-ad\nbogus line\n"
    )
    out = resolv_conf(str(f))
    assert out == "nameserver 10.1.2.3\nsearch example.org\noptions edns0 trust-ad\n"


def test_resolv_conf_fallback(tmp_path):
    f = tmp_path / "resolv.conf"
    f.write_text("nameserver 127.0.0.1\nsearch lan\n")
    assert resolv_conf(str(f)) == "nameserver 8.8.8.8\nnameserver 8.8.4.4\nsearch lan\n"
    assert resolv_conf(str(f), fallback=("10.88.0.1",)) == "nameserver 10.88.0.1\nsearch lan\n"
    assert resolv_conf(str(f), fallback=()) == "search lan\n"
    assert resolv_conf(str(tmp_path / "missing"), fallback=()) == ""


@pytest.mark.parametrize(
    "subnet", ["10.0.0.1/16", "10.0.0.0/31", "10.0.0.0/32", "fd00::/64", "nonsense", "10.0.0.0/33"]
)
def test_invalid_subnet(tmp_path, subnet):
    with pytest.raises(InvalidArgument, match="invalid subnet"):
        NetworkManager(tmp_path, subnet=subnet)


def test_manager_rejects_bad_options(tmp_path):
    with pytest.raises(InvalidArgument):
        NetworkManager(tmp_path, bridge="a-very-long-bridge-name")
    with pytest.raises(InvalidArgument):
        NetworkManager(tmp_path, port_backend="iptables")
    with pytest.raises(InvalidArgument):
        NetworkManager(tmp_path, mtu=70000)
    m = NetworkManager(tmp_path, subnet="192.168.7.0/24")
    assert m.gateway == "192.168.7.1" and m.veth_name("0123456789abcdef") == "cbx01234567"


def test_mtu_default_env_and_argument(tmp_path, monkeypatch):
    """A new bridge is as wide as loopback (65535) unless CELLBOX_MTU or the caller says."""
    monkeypatch.delenv("CELLBOX_MTU", raising=False)
    assert NetworkManager(tmp_path).mtu == 65535
    monkeypatch.setenv("CELLBOX_MTU", "1500")
    assert NetworkManager(tmp_path).mtu == 1500
    assert NetworkManager(tmp_path, mtu=9000).mtu == 9000
    for bad in ("jumbo", "67", "65536"):
        monkeypatch.setenv("CELLBOX_MTU", bad)
        with pytest.raises(InvalidArgument, match="MTU"):
            NetworkManager(tmp_path)


def test_allocate_lowest_free_and_exhaustion(tmp_path):
    st = NetworkState(tmp_path)
    net = parse_subnet("10.99.0.0/29")  # gateway .1, hosts .2-.6
    with st.locked() as data:
        for i in range(5):
            ip = allocate(data, "br", net)
            data["containers"][f"c{i}"] = {"bridge": "br", "ip": ip}
        with pytest.raises(AddressExhausted, match="no free address left in subnet 10.99.0.0/29"):
            allocate(data, "br", net)
        del data["containers"]["c2"]
        assert allocate(data, "br", net) == "10.99.0.4"
        assert allocate(data, "other", net) == "10.99.0.2"  # per bridge
    assert issubclass(AddressExhausted, Conflict)
    assert sorted(os.listdir(tmp_path)) == ["network.json", "network.lock"]  # no temp file left


def _allocate_one(state_dir: str, cid: str, queue) -> None:
    st = NetworkState(state_dir)
    with st.locked() as data:
        ip = allocate(data, "br", parse_subnet("10.88.0.0/16"))
        data["containers"][cid] = {"bridge": "br", "ip": ip}
    queue.put(ip)


def test_parallel_processes_never_share_an_address(tmp_path):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_allocate_one, args=(str(tmp_path), f"c{i}", q)) for i in range(20)]
    for p in procs:
        p.start()
    ips = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    assert len(set(ips)) == 20
    saved = NetworkState(tmp_path).snapshot()["containers"]
    assert sorted(r["ip"] for r in saved.values()) == sorted(ips)


def _chain(text: str, family: str, chain: str) -> list[str]:
    """The rules `render` adds to one chain, in order."""
    prefix = f"add rule {family} cellbox {chain} "
    return [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]


def test_nft_render():
    rules = nft.BridgeRules(
        bridge="cellbox0",
        subnet="10.209.0.0/16",
        gateway="10.209.0.1",
        published=(
            ("c1", "10.209.0.2", parse_publish("8080:80")),
            ("c2", "10.209.0.3", parse_publish("127.0.0.1:53:53/udp")),
        ),
        veths=("cbxc1", "cbxc2"),
    )
    text = nft.render([rules])
    lines = text.splitlines()
    assert lines[0] == "add table ip cellbox"  # one transaction, only this bridge's chains
    assert "delete table" not in text and "delete chain" not in text
    for kind in ("guard", "prerouting", "output", "postrouting", "input", "forward", "published"):
        assert f"add chain ip cellbox {kind}-cellbox0" in text
        assert f"flush chain ip cellbox {kind}-cellbox0" in lines  # refilled, not appended
    assert "add chain ip cellbox input-cellbox0 { type filter hook input priority filter;" in text
    # NAT: masquerade out, DNAT of published ports with the container's id as comment
    post = _chain(text, "ip", "postrouting-cellbox0")
    assert 'ip saddr 10.209.0.0/16 oifname != "cellbox0" masquerade' in post
    assert 'oifname "cellbox0" ip saddr 10.209.0.0/16 ct status dnat masquerade' in post  # hairpin
    pub = _chain(text, "ip", "published-cellbox0")
    mark = nft.PUBLISHED_MARK
    assert f'fib daddr type local tcp dport 8080 meta mark set {mark} dnat to 10.209.0.2:80 comment "cbx:c1"' in pub
    assert f'ip daddr 127.0.0.1 udp dport 53 meta mark set {mark} dnat to 10.209.0.3:53 comment "cbx:c2"' in pub
    # later packets and replies of a published port's connection carry the mark too
    assert _chain(text, "ip", "mark-cellbox0") == [f"ct status dnat meta mark set {mark}"]
    assert _chain(text, "ip", "prerouting-cellbox0") == ["jump published-cellbox0"]
    assert _chain(text, "ip", "output-cellbox0") == ["jump published-cellbox0"]
    # the host's loopback is never reachable through route_localnet, nor a spoofed source
    guard = _chain(text, "ip", "guard-cellbox0")
    assert 'iifname "cellbox0" ip daddr 127.0.0.0/8 drop' in guard
    assert 'iifname "cellbox0" ip saddr != 10.209.0.0/16 drop' in guard
    # input: only replies and ping of the gateway, then everything else from the bridge drops
    inp = _chain(text, "ip", "input-cellbox0")
    assert inp[0] == 'iifname "cellbox0" ct state established,related accept'
    assert 'iifname "cellbox0" ip daddr 10.209.0.1 icmp type echo-request accept' in inp
    assert inp[-1] == 'iifname "cellbox0" drop'
    assert not any("dport 53" in r for r in inp)  # no DNS at the gateway unless asked
    # forward, icc off: metadata dropped, into the bridge only replies and published ports
    fwd = _chain(text, "ip", "forward-cellbox0")
    assert fwd[0] == 'iifname "cellbox0" ip daddr 169.254.0.0/16 drop'
    # what leaves through an uplink gets its route's MSS from the SYN on (65535 bridge)
    mss = 'iifname "cellbox0" oifname != "cellbox0" tcp flags syn tcp option maxseg size set rt mtu'
    assert mss in fwd
    assert 'oifname "cellbox0" ct status dnat accept' in fwd
    assert fwd[-1] == 'oifname "cellbox0" drop'
    assert not any("accept" in r and "iifname" in r for r in fwd)  # no bridge-to-bridge
    l2 = _chain(text, "bridge", "forward-cellbox0")
    assert l2 == [
        f"meta mark {nft.PUBLISHED_MARK} accept",  # a published port is public, to containers too
        'iifname "cbxc1" oifname != "cbxc1" drop',
        'iifname "cbxc2" oifname != "cbxc2" drop',
    ]
    # icc on: bridge-to-bridge accepted before the drop, no layer-2 drops
    on = nft.render([dataclasses.replace(rules, icc=True)])
    fwd_on = _chain(on, "ip", "forward-cellbox0")
    icc = 'iifname "cellbox0" oifname "cellbox0" accept'
    assert icc in fwd_on and fwd_on.index(icc) < fwd_on.index('oifname "cellbox0" drop')
    assert _chain(on, "bridge", "forward-cellbox0") == []
    assert "flush chain bridge cellbox forward-cellbox0" in on  # the old drops are gone
    assert _chain(on, "ip", "input-cellbox0")[-1] == 'iifname "cellbox0" drop'  # host still closed


def test_nft_render_removes_a_bridge_and_keeps_others():
    keep = nft.BridgeRules(bridge="br1", subnet="10.1.0.0/24", gateway="10.1.0.1")
    text = nft.render([keep], remove=["br2", "br1"])
    assert "delete chain ip cellbox input-br2" in text
    assert "delete chain bridge cellbox forward-br2" in text
    assert "delete chain ip cellbox input-br1" not in text  # kept wins over remove
    assert 'add rule ip cellbox input-br1 iifname "br1" drop' in text
    lines = text.splitlines()  # flushed before deleted: no jump left to a deleted chain
    assert lines.index("flush chain ip cellbox prerouting-br2") < lines.index(
        "delete chain ip cellbox published-br2"
    )
