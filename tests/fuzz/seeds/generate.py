#!/usr/bin/env python3
"""Writes the seed corpora: a few valid and near-valid inputs per fuzz target, so the
fuzzer starts inside each format instead of having to discover it.

Run from anywhere: python3 tests/fuzz/seeds/generate.py
"""

import json
import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent
CONFIG_EXAMPLES = HERE.parent.parent / "config-examples.json"

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

CATALOG = [
    {
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "node-1",
        "Address": "10.0.0.5",
        "Datacenter": "dc1",
        "NodeMeta": {"rack": "r1", "zone": "eu-west-1a"},
        "ServiceID": "echo-1",
        "ServiceName": "echo",
        "ServiceAddress": "10.0.0.21",
        "ServicePort": 8080,
        "ServiceTags": ["v2", "primary"],
        "ServiceMeta": {"version": "1.4.2", "region": "eu-west", "zone": "a"},
        "ModifyIndex": 51,
    },
    {
        "Node": "node-2",
        "Address": "10.0.0.6",
        "Datacenter": "dc1",
        "NodeMeta": None,
        "ServiceID": "echo-2",
        "ServiceName": "echo",
        "ServiceAddress": "",
        "ServicePort": 8081,
        "ServiceTags": None,
        "ServiceMeta": {"version": "1.5.0-rc\r\nx-evil: 1", "region": "Z\u00fcrich"},
        "ModifyIndex": 52,
    },
]


def health_entry(i):
    """A catalog entry as /v1/health/service/<name> nests it."""
    return {
        "Node": {
            "Node": i["Node"],
            "Address": i["Address"],
            "Datacenter": i["Datacenter"],
            "Meta": i["NodeMeta"],
            "TaggedAddresses": {"lan": i["Address"]},
        },
        "Service": {
            "ID": i["ServiceID"],
            "Service": i["ServiceName"],
            "Tags": i["ServiceTags"],
            "Address": i["ServiceAddress"],
            "Port": i["ServicePort"],
            "Meta": i["ServiceMeta"],
            "ModifyIndex": i["ModifyIndex"],
        },
        "Checks": [{"CheckID": "serfHealth", "Status": "passing", "ServiceTags": []}],
    }


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def text(s):
    b = s.encode()
    return varint(len(b)) + b


def cache_entry(status, instances):
    """The cache's binary entry format, version 1 (see src/cache.rs)."""
    out = bytes([1, status])
    for v in (1_700_000_030_000, 1_700_000_330_000, 1_700_000_030_000, 0, 42):
        out += varint(v)
    out += varint(len(instances))
    for i in instances:
        for field in ("Node", "Address", "Datacenter", "ServiceID", "ServiceName", "ServiceAddress"):
            out += text(i.get(field) or "")
        out += varint(i["ServicePort"]) + varint(i["ModifyIndex"])
        tags = i.get("ServiceTags") or []
        out += varint(len(tags)) + b"".join(text(t) for t in tags)
        for m in (i.get("ServiceMeta") or {}, i.get("NodeMeta") or {}):
            items = sorted(m.items())
            out += varint(len(items))
            out += b"".join(text(k) + text(v) for k, v in items)
    return out


def fields(*texts):
    """Text fields joined by 0xFF, the separator the multi-field targets split on."""
    return b"\xff".join(t if isinstance(t, bytes) else t.encode() for t in texts)


def seeds():
    catalog = json.dumps(CATALOG, indent=1).encode()
    configs = json.loads(CONFIG_EXAMPLES.read_text())["valid"]
    yield "traceparent", {
        "v00": f"00-{TRACE_ID}-{PARENT_ID}-01",
        "v00-spaces": f" \t00-{TRACE_ID}-{PARENT_ID}-00 ",
        "future-version": f"cc-{TRACE_ID}-{PARENT_ID}-09-what-the-future-holds",
        "zero-trace-id": f"00-{'0' * 32}-{PARENT_ID}-01",
    }
    yield "tracestate", {
        "vendors": fields("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", "ours", "s1"),
        "multi-tenant": fields("t@sys=1, a=b  ,,x-y_z*/=v a l u", "rojo", "new"),
    }
    yield "baggage", {
        "members": fields(
            "userId=alice, ui.component=cart;p=1 ;flag,tier=gold", "consul.service", "echo\r\nZ\u00fcrich"
        ),
        "encoded": fields("k=v%2C%20w,other=%E6%9D%B1", "key", "50%"),
    }
    yield "consul_catalog", {
        "two-instances": catalog,
        "empty": b"[]",
        "nulls": json.dumps([{"Node": None, "ServicePort": None, "ServiceMeta": None}]).encode(),
        "wrong-type": json.dumps([{"ServicePort": "8080"}]).encode(),
        "mixed": json.dumps(
            [
                CATALOG[0],
                7,
                {"ServiceMeta": {"version": "2", "weight": 5}, "ServiceTags": ["a", None, 1]},
                {"ServiceProxy": {"Config": {"deep": [[[{"x": [1.5, -2, True]}]]]}}},
            ]
        ).encode(),
    }
    yield "consul_health", {
        "two-instances": json.dumps([health_entry(i) for i in CATALOG], indent=1).encode(),
        "empty": b"[]",
        "nulls": json.dumps([{"Node": None, "Service": {"Meta": None, "Tags": None}, "Checks": None}]).encode(),
        "wrong-type": json.dumps([{"Node": [], "Service": {"Port": "8080"}}]).encode(),
    }
    yield "config", {f"example-{n}": json.dumps(c).encode() for n, c in enumerate(configs)}
    yield "cache_entry", {
        "found": cache_entry(0, CATALOG),
        "unknown": cache_entry(1, []),
        "failed": cache_entry(2, []),
    }
    # Two bytes of bound (little endian), then the value.
    yield "header_value", {
        "crlf": struct.pack("<H", 64) + b"v1\r\nx-evil: 1",
        "unicode": struct.pack("<H", 9) + "  Z\u00fcrich \u6771\u4eac\t".encode(),
        "clean": struct.pack("<H", 300) + b"v1.2.3-rc1 (eu-west)",
    }
    yield "enrich", {
        "match": fields("echo", "10.0.0.21:8080", "ui.component=cart,tenant=%0D%0Aacme", catalog),
        "node-address": fields("echo", "[10.0.0.6]:8081", "", catalog),
        "bad-baggage": fields("echo", "not-an-address", "x", catalog),
    }
    yield "service_name", {
        "plain": b"echo.service.consul",
        "tag-dc-port": b"v2.Echo.service.DC1.consul.:8080",
        "not-consul": b"echo.example.com",
    }


def main():
    for target, files in seeds():
        folder = HERE / target
        folder.mkdir(exist_ok=True)
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    main()
