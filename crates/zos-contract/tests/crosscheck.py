#!/usr/bin/env python3
"""Independent check of docs/contract-format.md.

Written from the document alone (not from the Rust code): a JCS canonicalizer, sha256
and ed25519 from `cryptography`. Reads the worked example's blocks, recomputes every
digest and signature, and verifies the contract document's signatures; the same for
section 9.1's placement contract and its assignment.
Usage: crosscheck.py docs/contract-format.md

With --verify MANIFEST it reads contract documents as a node would (sections 2.1, 4,
7 and 8: limits, JSON, shape, signature rules, validity, parameters, the deployment's
shape) and prints, per document, the codes of its reasons and warnings as JSON.
MANIFEST is {"now": unix seconds, "node": public key, "documents": {name: path}}.
Not implemented here: template expansion and the deployment's values (only its shape,
which expansion does not change), blueprints by digest, replay, author policies.
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

    # Section 9.1: the placement contract and its assignment.
    keys["orchestrator"], pub = public_hex(6)
    check("orchestrator-public", pub)
    placed = json.loads(b["placement-contract-canonical"], object_pairs_hook=no_duplicates)
    check("placement-contract-canonical", jcs(placed))
    if "nodes" in placed or placed["placement"]["orchestrator"] != pub:
        failures.append("placement contract: nodes present or another orchestrator")
    p_digest = hashlib.sha256(jcs(placed).encode("utf-8")).digest()
    check("placement-contract-digest", p_digest.hex())
    check("placement-owner-signature", keys["owner"].sign(p_digest).hex())
    check("placement-legal-signature", keys["legal"].sign(p_digest).hex())
    assignment = json.loads(b["assignment-canonical"], object_pairs_hook=no_duplicates)
    check("assignment-canonical", jcs(assignment))
    if (assignment["digest"] != p_digest.hex() or assignment["contract"] != placed["id"]
            or assignment["version"] != placed["version"]
            or assignment["orchestrator"] != placed["placement"]["orchestrator"]
            or not 0 <= assignment["replica"] < placed["placement"]["replicas"]
            or assignment["epoch"] < 1):
        failures.append("the assignment does not fit the placement contract (section 6.1)")
    a_digest = hashlib.sha256(jcs(assignment).encode("utf-8")).digest()
    check("assignment-digest", a_digest.hex())
    check("assignment-signature", keys["orchestrator"].sign(a_digest).hex())

    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print("crosscheck: all values agree")


# ---------------------------------------------------------------------------------
# Reading documents as a node does (docs/contract-format.md sections 2.1, 4, 7, 8).

MAX_SAFE = 2**53 - 1
MAX_BYTES, MAX_STRING, MAX_ITEMS, MAX_DEPTH, MAX_WORKLOADS = 256 * 1024, 4096, 256, 32, 64


class Refuse(Exception):
    def __init__(self, code, path):
        super().__init__("%s at %s" % (code, path))
        self.code, self.path = code, path


def scan_depth(data):
    """Section 7: arrays and objects nested deeper than 32, found in the bytes."""
    depth, in_string, i = 0, False, 0
    while i < len(data):
        b = data[i]
        if in_string:
            if b == 0x5C:
                i += 1
            elif b == 0x22:
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise Refuse("oversized", "$")
        elif b in b"]}":
            depth = max(0, depth - 1)
        i += 1


def safe_int(text):
    n = int(text)
    if abs(n) > MAX_SAFE:
        raise Refuse("malformed", "$")
    return n


def refuse_constant(name):
    raise Refuse("malformed", "$")


def finite_float(text):
    f = float(text)
    if f in (float("inf"), float("-inf")):
        raise Refuse("malformed", "$")
    return f


def parse(data):
    """Section 2.1 steps 1 and 2."""
    if len(data) > MAX_BYTES:
        raise Refuse("oversized", "$")
    scan_depth(data)
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=no_duplicates,
            parse_int=safe_int,
            parse_float=finite_float,
            parse_constant=refuse_constant,
        )
    except (ValueError, RecursionError):
        raise Refuse("malformed", "$")
    walk_strings(value)
    return value


def walk_strings(v):
    """Section 2: a string with a lone surrogate is not text."""
    if isinstance(v, dict):
        items = list(v.keys()) + list(v.values())
    elif isinstance(v, list):
        items = v
    else:
        items = [v]
    for x in items:
        if isinstance(x, str):
            if any(0xD800 <= ord(c) <= 0xDFFF for c in x):
                raise Refuse("malformed", "$")
        elif isinstance(x, (dict, list)):
            walk_strings(x)


def check_limits(v, path="$", depth=1):
    """Section 7, on the parsed value."""
    if depth > MAX_DEPTH:
        raise Refuse("oversized", path)
    if isinstance(v, str) and len(v) > MAX_STRING:
        raise Refuse("oversized", path)
    if isinstance(v, list):
        if len(v) > MAX_ITEMS:
            raise Refuse("oversized", path)
        for i, x in enumerate(v):
            check_limits(x, "%s[%d]" % (path, i), depth + 1)
    if isinstance(v, dict):
        if len(v) > MAX_ITEMS:
            raise Refuse("oversized", path)
        for k, x in v.items():
            if len(k) > MAX_STRING:
                raise Refuse("oversized", path + "." + k)
            check_limits(x, path + "." + k, depth + 1)


def member(v, *names):
    for n in names:
        if not isinstance(v, dict):
            return None
        v = v.get(n)
    return v


def check_workloads(workloads, path):
    if isinstance(workloads, list) and len(workloads) > MAX_WORKLOADS:
        raise Refuse("oversized", path)


# Shapes: each checker refuses with `malformed` at the path of the first problem.

def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def scalar(pred):
    def check(v, path):
        if not pred(v):
            raise Refuse("malformed", path)
    return check


HEX = re.compile(r"[0-9a-f]*\Z")
string = scalar(lambda v: isinstance(v, str))
integer = scalar(is_int)
uint = scalar(lambda v: is_int(v) and v >= 0)
boolean = scalar(lambda v: isinstance(v, bool))
key = scalar(lambda v: isinstance(v, str) and len(v) == 64 and HEX.match(v))
signature = scalar(lambda v: isinstance(v, str) and len(v) == 128 and HEX.match(v))
anything = scalar(lambda v: True)


def list_of(item):
    def check(v, path):
        if not isinstance(v, list):
            raise Refuse("malformed", path)
        for i, x in enumerate(v):
            item(x, "%s[%d]" % (path, i))
    return check


def map_of(item):
    def check(v, path):
        if not isinstance(v, dict):
            raise Refuse("malformed", path)
        for k, x in v.items():
            item(x, path + "." + k)
    return check


def obj(required, optional=None):
    optional = optional or {}

    def check(v, path):
        if not isinstance(v, dict):
            raise Refuse("malformed", path)
        for k, x in v.items():
            if k not in required and k not in optional or x is None:
                raise Refuse("malformed", path + "." + k)
        for k in required:
            if k not in v:
                raise Refuse("malformed", path)
        for k, c in list(required.items()) + list(optional.items()):
            if k in v:
                c(v[k], path + "." + k)
    return check


def one_of(variants):
    def check(v, path):
        if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in variants:
            raise Refuse("malformed", path)
        k, x = next(iter(v.items()))
        variants[k](x, path + "." + k)
    return check


stakeholder = obj({"key": key, "weight": uint}, {"required": boolean})
entry = obj({"signer": key, "signature": signature})
placement = obj(
    {"farm": string, "replicas": uint, "orchestrator": key,
     "failover": obj({"mode": scalar(lambda v: v in ("move", "stay")), "after_s": uint})},
    {"constraints": obj({}, {"min_ssd_gib": uint, "min_memory_mib": uint})},
)
contract_body = obj(
    {"id": string, "version": uint, "owner": key,
     "blueprint": one_of({"embedded": anything, "sha256": key})},
    {"nodes": list_of(key), "placement": placement, "params": map_of(anything),
     "stakeholders": list_of(stakeholder), "threshold": uint,
     "not_before": uint, "expires": uint},
)
contract_document = obj({"contract": contract_body}, {"signatures": list_of(entry)})


def declaration(v, path):
    if not isinstance(v, dict) or v.get("type") not in ("int", "string", "enum", "bool"):
        raise Refuse("malformed", path)
    rest = dict(v)
    kind = rest.pop("type")
    d = {"description": string}
    shapes = {
        "int": obj({"min": integer, "max": integer}, dict(d, default=integer)),
        "string": obj({"pattern": string, "max_len": uint}, dict(d, default=string)),
        "enum": obj({"values": list_of(string)}, dict(d, default=string)),
        "bool": obj({}, dict(d, default=boolean)),
    }
    shapes[kind](rest, path)


blueprint_body = obj(
    {"name": string, "version": string, "body": anything},
    {"description": string, "params": map_of(declaration)},
)
blueprint_document = obj({"blueprint": blueprint_body, "author": key, "signature": signature})

# The deployment's shape (section 5): objects where objects are specified. Expansion
# replaces strings only, so the template has the deployment's shape.
loose = lambda fields: obj({}, dict((f, anything) for f in fields))
workload = obj(
    {"name": anything, "kind": anything, "cpu": anything, "memory_mib": anything,
     "flist": obj({"url": anything, "sha256": anything, "stores": list_of(anything)},
                  {"publishers": list_of(anything)})},
    {"entrypoint": list_of(anything), "env": map_of(anything), "cwd": anything,
     "disk_mib": anything, "network": anything,
     "mounts": list_of(obj({"volume": anything, "path": anything}, {"read_only": anything})),
     "ports": list_of(obj({"port": anything, "public": anything}, {"protocol": anything}))},
)
deployment = obj(
    {"workloads": list_of(workload)},
    {"networks": list_of(obj({"name": anything, "subnet": anything},
                             {"egress_allow": list_of(anything)})),
     "volumes": list_of(obj({"name": anything, "size_mib": anything}, {"disk": anything})),
     "publish_logs": anything,
     "logs": obj({"url": anything}, {"ca_pem": anything}),
     "metrics": obj({"url": anything}, {"ca_pem": anything})},
)


def digest_of(v):
    return hashlib.sha256(jcs(v).encode("utf-8")).digest()


def verifies(public_hex, signature_hex, digest):
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(
            bytes.fromhex(signature_hex), digest)
        return True
    except Exception:
        return False


def rules(c, path="$.contract"):
    """The structural rules of section 8's table (fourth row)."""
    out = []
    if not re.fullmatch(r"[a-z0-9-]{1,64}", c["id"]):
        out.append(("malformed", path + ".id"))
    if c["version"] == 0:
        out.append(("malformed", path + ".version"))
    if "nodes" in c and "placement" in c:
        out.append(("malformed", path))
    elif "nodes" not in c and "placement" not in c:
        out.append(("malformed", path))
    elif "nodes" in c:
        if not c["nodes"] or len(set(c["nodes"])) != len(c["nodes"]):
            out.append(("malformed", path + ".nodes"))
    else:
        p = c["placement"]
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", p["farm"]) or p["farm"].startswith("."):
            out.append(("malformed", path + ".placement.farm"))
        if not 1 <= p["replicas"] <= 64:
            out.append(("malformed", path + ".placement.replicas"))
        if not 10 <= p["failover"]["after_s"] <= 86400:
            out.append(("malformed", path + ".placement.failover.after_s"))
    seen = {c["owner"]}
    for i, s in enumerate(c.get("stakeholders", [])):
        if s["key"] in seen:
            out.append(("malformed", "%s.stakeholders[%d].key" % (path, i)))
        seen.add(s["key"])
        if s["weight"] == 0 and not s.get("required", False):
            out.append(("malformed", "%s.stakeholders[%d].weight" % (path, i)))
    if c.get("threshold", 0) > sum(s["weight"] for s in c.get("stakeholders", [])):
        out.append(("malformed", path + ".threshold"))
    if "not_before" in c and "expires" in c and c["expires"] <= c["not_before"]:
        out.append(("malformed", path + ".expires"))
    return out


def signature_rules(c, entries, digest):
    """Section 4: count what verifies; the rest are warnings unless the rules fail."""
    weights = {s["key"]: s for s in c.get("stakeholders", [])}
    counted, seen, ignored = set(), set(), []
    for e in entries:
        signer = e["signer"]
        if signer != c["owner"] and signer not in weights:
            ignored.append("unknown_signer")
            continue
        if signer in seen:
            ignored.append("duplicate_signature")
        seen.add(signer)
        if verifies(signer, e["signature"], digest):
            counted.add(signer)
        else:
            ignored.append("bad_signature")
    failed = []
    if c["owner"] not in counted:
        failed.append("owner_signature_missing")
    for s in c.get("stakeholders", []):
        if s.get("required", False) and s["key"] not in counted:
            failed.append("required_signer_missing")
    if sum(s["weight"] for k, s in weights.items() if k in counted) < c.get("threshold", 0):
        failed.append("threshold_not_met")
    return (ignored + failed, []) if failed else ([], ignored)


def param_problems(decls, given):
    out = [n for n in given if n not in decls]
    for name, d in decls.items():
        v = given.get(name, d.get("default"))
        if v is None:
            out.append(name)
            continue
        t = d["type"]
        ok = (
            (t == "int" and is_int(v) and d["min"] <= v <= d["max"])
            or (t == "string" and isinstance(v, str) and len(v) <= d["max_len"]
                and re.fullmatch(d["pattern"], v))
            or (t == "enum" and isinstance(v, str) and v in d["values"])
            or (t == "bool" and isinstance(v, bool))
        )
        if not ok:
            out.append(name)
    return ["param_out_of_bounds"] * len(out)


def verify_contract(data, now, node):
    """Returns (reason codes, warning codes) for a contract document's bytes."""
    try:
        doc = parse(data)
        check_limits(doc)
        check_workloads(member(doc, "contract", "blueprint", "embedded", "blueprint", "body",
                               "workloads"),
                        "$.contract.blueprint.embedded.blueprint.body.workloads")
        contract_document(doc, "$")
    except Refuse as r:
        return [r.code], []
    c = doc["contract"]
    reasons = [code for code, _ in rules(c)]
    more, warnings = signature_rules(c, doc.get("signatures", []), digest_of(c))
    reasons += more
    if "not_before" in c and now < c["not_before"]:
        reasons.append("not_yet_valid")
    if "expires" in c and now >= c["expires"]:
        reasons.append("expired")
    if "placement" in c:
        reasons.append("unassigned")
    elif node not in c.get("nodes", []):
        reasons.append("wrong_node")
    bp = c["blueprint"].get("embedded")
    if bp is None:
        return reasons + ["blueprint_unresolved"], warnings
    try:
        blueprint_document(bp, "$.contract.blueprint.embedded")
    except Refuse as r:
        return reasons + [r.code], warnings
    if not verifies(bp["author"], bp["signature"], digest_of(bp["blueprint"])):
        return reasons + ["blueprint_signature_invalid"], warnings
    problems = param_problems(bp["blueprint"].get("params", {}), c.get("params", {}))
    if problems:
        return reasons + problems, warnings
    try:
        deployment(bp["blueprint"]["body"], "$.body")
    except Refuse:
        reasons.append("invalid_deployment")
    return reasons, warnings


def verify_main(manifest_path):
    manifest = json.load(open(manifest_path, encoding="utf-8"))
    out = {}
    for name, path in manifest["documents"].items():
        reasons, warnings = verify_contract(open(path, "rb").read(), manifest["now"],
                                            manifest["node"])
        out[name] = {"reasons": sorted(set(reasons)), "warnings": sorted(set(warnings))}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    if sys.argv[1] == "--verify":
        verify_main(sys.argv[2])
    else:
        main()
