#!/usr/bin/env python3
"""An independent check of sluice_lb with scapy.

`gen CASES` crafts packets and writes them with what each must produce. The Rust test runs
every frame through the real program (BPF_PROG_TEST_RUN) and writes the results; `check CASES
RESULTS` then dissects each output with scapy and checks it. Addresses must match the lab the
Rust test builds (lb-userspace/tests/dataplane/scapy.rs).
"""
import json
import sys

from scapy.all import ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6, ICMPv6PacketTooBig, raw, in6_chksum

ROUTER = "02:00:00:00:00:02"
EXT = "02:00:00:00:00:01"
NODE4, NODE6 = "10.1.0.1", "fd01::1"
VIP4, VIP6 = "198.51.100.1", "2001:db8::1"
BACKENDS4 = {"10.1.0.11", "10.1.0.12", "10.1.0.13"}
BACKENDS6 = {"fd01::11", "fd01::12", "fd01::13"}
XDP = {"drop": 1, "pass": 2, "tx": 3, "redirect": 4}


def frame(l3, vlan=None):
    eth = Ether(src=ROUTER, dst=EXT)
    return eth / Dot1Q(vlan=vlan) / l3 if vlan else eth / l3


def gen(path):
    cases = []

    def add(name, pkt, expect, **kw):
        cases.append({"name": name, "frame": raw(pkt).hex(), "expect": expect, **kw})

    for sport in (1000, 2000, 3000):
        add(f"tcp4-syn-{sport}", frame(IP(src="203.0.113.5", dst=VIP4, tos=0x2e) / TCP(sport=sport, dport=80, flags="S")), "encap")
        add(f"udp6-{sport}", frame(IPv6(src="2001:db8:c::5", dst=VIP6, tc=0x10) / UDP(sport=sport, dport=53) / b"q"), "encap")
    # The same flow again must reach the same backend.
    add("tcp4-syn-1000-again", frame(IP(src="203.0.113.5", dst=VIP4, tos=0x2e) / TCP(sport=1000, dport=80, flags="S")), "encap")
    # Tunnelled out of another interface: the ingress link's VLAN tag is not carried over.
    add("tcp4-vlan", frame(IP(src="203.0.113.6", dst=VIP4) / TCP(sport=7, dport=80, flags="A") / b"data", vlan=12), "encap")
    add("tcp4-options", frame(IP(src="203.0.113.7", dst=VIP4, options=b"\x01\x01\x01\x01") / TCP(sport=8, dport=80, flags="S")), "encap")
    add("too-big4", frame(IP(src="203.0.113.8", dst=VIP4, flags="DF") / TCP(sport=9, dport=80, flags="A") / (b"x" * 1460)), "too_big", mtu=1480)
    add("too-big6", frame(IPv6(src="2001:db8:c::8", dst=VIP6) / UDP(sport=9, dport=53) / (b"y" * 1452)), "too_big", mtu=1460)
    add("not-vip", frame(IP(src="203.0.113.9", dst="198.51.100.77") / TCP(sport=10, dport=80, flags="S")), "pass")
    add("wrong-port", frame(IP(src="203.0.113.9", dst=VIP4) / TCP(sport=10, dport=81, flags="S")), "drop")
    short = raw(frame(IP(src="203.0.113.9", dst=VIP4) / TCP(sport=10, dport=80, flags="S")))
    cases.append({"name": "truncated-tcp", "frame": short[:44].hex(), "expect": "drop"})
    with open(path, "w") as f:
        json.dump(cases, f)



def recompute_ipv4(ip):
    c = ip.copy()
    del c.chksum
    return IP(raw(c)).chksum


def check(cases_path, results_path):
    cases = {c["name"]: c for c in json.load(open(cases_path))}
    results = json.load(open(results_path))
    failures = []
    chosen = {}

    def fail(name, why):
        failures.append(f"{name}: {why}")

    for r in results:
        c = cases[r["name"]]
        name, sent, out = c["name"], Ether(bytes.fromhex(c["frame"])), bytes.fromhex(r["out"])
        expect = c["expect"]
        if expect == "pass":
            if r["action"] != XDP["pass"] or out != bytes.fromhex(c["frame"]):
                fail(name, "not passed untouched")
            continue
        if expect == "drop":
            if r["action"] != XDP["drop"]:
                fail(name, f"action {r['action']}, want drop")
            continue
        got = Ether(out)
        inner_sent = sent[IP] if IP in sent else sent[IPv6]
        if expect == "encap":
            if r["action"] != XDP["redirect"]:
                fail(name, f"action {r['action']}, want redirect")
                continue
            if Dot1Q in got:
                fail(name, "the ingress VLAN tag was carried to another interface")
            outer = got.payload.payload if Dot1Q in got else got.payload
            inner_tos = inner_sent.tos if IP in sent else inner_sent.tc
            if isinstance(outer, IP):
                ok = (outer.src == NODE4 and outer.dst in BACKENDS4 and outer.ttl == 64 and outer.flags == "DF"
                      and outer.tos == inner_tos and outer.proto == (4 if IP in sent else 41)
                      and outer.len == 20 + len(raw(inner_sent)) and recompute_ipv4(outer) == outer.chksum)
                backend = outer.dst
                payload = raw(outer)[outer.ihl * 4:]
            else:
                ok = (outer.src == NODE6 and outer.dst in BACKENDS6 and outer.hlim == 64 and outer.tc == inner_tos
                      and outer.nh == (4 if IP in sent else 41) and outer.plen == len(raw(inner_sent)))
                backend = outer.dst
                payload = raw(outer)[40:]
            if not ok:
                fail(name, f"outer header wrong: {outer.summary()} {outer.fields}")
            if payload[: len(raw(inner_sent))] != raw(inner_sent):
                fail(name, "inner packet changed")
            chosen[name] = backend
        elif expect == "too_big":
            if r["action"] != XDP["tx"]:
                fail(name, f"action {r['action']}, want tx")
                continue
            if got.dst != ROUTER or got.src != EXT:
                fail(name, "reply not sent back to the router")
            quote = raw(inner_sent)[:128]
            if IP in sent:
                ip, icmp = got[IP], got[ICMP]
                ok = (ip.src == inner_sent.dst and ip.dst == inner_sent.src and recompute_ipv4(ip) == ip.chksum
                      and icmp.type == 3 and icmp.code == 4 and icmp.nexthopmtu == c["mtu"])
                c2 = icmp.copy()
                del c2.chksum
                ok = ok and ICMP(raw(c2)).chksum == icmp.chksum and raw(icmp.payload) == quote
            else:
                ip, ptb = got[IPv6], got[ICMPv6PacketTooBig]
                body = raw(ptb)
                ok = (ip.src == inner_sent.dst and ip.dst == inner_sent.src and ip.nh == 58 and ptb.mtu == c["mtu"]
                      and in6_chksum(58, ip, body) == 0 and body[8:] == quote)
            if not ok:
                fail(name, f"bad reply: {got.summary()}")
    if chosen.get("tcp4-syn-1000") != chosen.get("tcp4-syn-1000-again"):
        fail("tcp4-syn-1000", f"the same flow went to {chosen.get('tcp4-syn-1000')} and {chosen.get('tcp4-syn-1000-again')}")
    if len(results) != len(cases):
        fail("all", f"{len(results)} results for {len(cases)} cases")
    print(f"scapy: checked {len(results)} outputs, {len(failures)} failures")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2])
    else:
        sys.exit(check(sys.argv[2], sys.argv[3]))
