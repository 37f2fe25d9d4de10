#!/usr/bin/env python3
"""Independent check of docs/contract-format.md.

Written from the document alone (not from the Rust code): a JCS canonicalizer, sha256
and ed25519 from `cryptography`. Reads the worked example's blocks, recomputes every
digest and signature, and verifies the contract document's signatures.
Usage: crosscheck.py docs/contract-format.md
"""
import hashlib
import json
import re
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives import serialization


def jcs(v):
    """RFC 8785 for the subset zosd documents use (integers, no floats)."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        raise ValueError("floats are not used by zosd documents")
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            o = ord(ch)
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch in "\b\t\n\f\r":
                out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
            elif o < 0x20:
                out.append("\\u%04x" % o)
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v.keys(), key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(jcs(k) + ":" + jcs(v[k]) for k in keys) + "}"
    raise TypeError(type(v))


def no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError("duplicate key %r" % k)
        d[k] = v
    return d


def blocks(doc):
    return {m.group(1): m.group(2) for m in re.finditer(r"```text (\S+)\n(.*?)\n```", doc, re.S)}


def public_hex(seed_byte):
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed_byte]) * 32)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, raw.hex()


def main():
    b = blocks(open(sys.argv[1], encoding="utf-8").read())
    failures = []

    def check(name, got):
        if b[name] != got:
            failures.append("%s: document %s, computed %s" % (name, b[name], got))

    keys = {}
    for name, seed in [("expert", 1), ("owner", 2), ("legal", 3), ("node", 5)]:
        keys[name], pub = public_hex(seed)
        check(name + "-public", pub)

    document = json.loads(b["contract-document"], object_pairs_hook=no_duplicates)
    contract = document["contract"]
    signed_bp = contract["blueprint"]["embedded"]

    bp_canonical = jcs(signed_bp["blueprint"])
    check("blueprint-canonical", bp_canonical)
    bp_digest = hashlib.sha256(bp_canonical.encode("utf-8")).digest()
    check("blueprint-digest", bp_digest.hex())
    check("blueprint-signature", keys["expert"].sign(bp_digest).hex())
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(signed_bp["author"])).verify(
        bytes.fromhex(signed_bp["signature"]), bp_digest
    )

    c_canonical = jcs(contract)
    check("contract-canonical", c_canonical)
    c_digest = hashlib.sha256(c_canonical.encode("utf-8")).digest()
    check("contract-digest", c_digest.hex())
    check("owner-signature", keys["owner"].sign(c_digest).hex())
    check("legal-signature", keys["legal"].sign(c_digest).hex())
    for entry in document["signatures"]:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["signer"])).verify(
            bytes.fromhex(entry["signature"]), c_digest
        )

    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print("crosscheck: all values agree")


if __name__ == "__main__":
    main()
