#!/usr/bin/env python3
"""Independent cross-check of the rfs v2 .fl format (docs/flist-format.md).

Written from the spec only, with the standard library (sqlite3, hashlib.blake2b),
`cryptography` for AES-256-GCM and a small raw-Snappy codec below.

  flist_check.py read FL STORE_DIR     verify every block of FL, print {path: info} JSON
  flist_check.py write FL STORE_DIR    write a small flist by hand, print what it holds
"""
import hashlib
import json
import os
import sqlite3
import stat
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

BLOCK = 512 * 1024


def b2(data):
    return hashlib.blake2b(data, digest_size=32).digest()


def varint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def snappy_decompress(buf):
    n, pos = varint(buf, 0)
    out = bytearray()
    while pos < len(buf):
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            ln = tag >> 2
            if ln >= 60:
                extra = ln - 59
                ln = int.from_bytes(buf[pos:pos + extra], "little")
                pos += extra
            ln += 1
            out += buf[pos:pos + ln]
            pos += ln
            continue
        if kind == 1:
            ln = 4 + ((tag >> 2) & 7)
            off = ((tag >> 5) << 8) | buf[pos]
            pos += 1
        elif kind == 2:
            ln = 1 + (tag >> 2)
            off = int.from_bytes(buf[pos:pos + 2], "little")
            pos += 2
        else:
            ln = 1 + (tag >> 2)
            off = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        if off == 0 or off > len(out):
            raise ValueError("bad snappy copy offset")
        for _ in range(ln):  # copies may overlap their own output
            out.append(out[-off])
    if len(out) != n:
        raise ValueError("snappy length mismatch")
    return bytes(out)


def snappy_compress_literals(data):
    """Valid raw Snappy using literals only (a decoder must accept it)."""
    out = bytearray()
    n = len(data)
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    for i in range(0, len(data), 65536):
        chunk = data[i:i + 65536]
        out.append(61 << 2)  # literal, length-1 in the next 2 bytes
        out += (len(chunk) - 1).to_bytes(2, "little")
        out += chunk
    return bytes(out)


def blob_path(store, ident):
    h = ident.hex()
    return os.path.join(store, h[:2], h)


def read(fl, store):
    db = sqlite3.connect("file:%s?mode=ro" % fl, uri=True)
    rows = db.execute(
        "SELECT ino, parent, name, size, uid, gid, mode, rdev, ctime, mtime FROM inode"
    ).fetchall()
    nodes = {r[0]: r for r in rows}
    roots = [r for r in rows if r[1] == 0]
    assert len(roots) == 1, "exactly one root"
    assert roots[0][0] == 1 and roots[0][2] == "/", "rfs root convention"
    extra = dict(db.execute("SELECT ino, data FROM extra").fetchall())
    blocks = {}
    for ino, ident, key in db.execute("SELECT ino, id, key FROM block ORDER BY rowid"):
        assert isinstance(ident, bytes) and len(ident) == 32
        assert isinstance(key, bytes) and len(key) == 32
        blocks.setdefault(ino, []).append((ident, key))

    def path(ino):
        parts = []
        while nodes[ino][1] != 0:
            parts.append(nodes[ino][2])
            ino = nodes[ino][1]
        return "/" + "/".join(reversed(parts))

    out = {}
    for ino, parent, name, size, uid, gid, mode, rdev, ctime, mtime in rows:
        info = {"mode": mode, "mtime": mtime, "size": size}
        if stat.S_ISREG(mode):
            h = hashlib.sha256()
            got = 0
            bl = blocks.get(ino, [])
            assert len(bl) == (size + BLOCK - 1) // BLOCK, "block count"
            for ident, key in bl:
                ct = open(blob_path(store, ident), "rb").read()
                assert b2(ct) == ident, "id = blake2b-256(ciphertext)"
                plain = snappy_decompress(AESGCM(key).decrypt(key[:12], ct, None))
                assert b2(plain) == key, "key = blake2b-256(plaintext)"
                h.update(plain)
                got += len(plain)
            assert got == size, "sizes add up"
            info["sha256"] = h.hexdigest()
        elif stat.S_ISLNK(mode):
            t = extra[ino]
            info["target"] = (t if isinstance(t, bytes) else t.encode()).decode()
        out[path(ino)] = info
    routes = db.execute("SELECT start, end, url FROM route").fetchall()
    json.dump({"entries": out, "routes": routes}, sys.stdout, sort_keys=True)


def write(fl, store):
    schema = """
    CREATE TABLE inode (ino INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER,
        name VARCHAR(255), size INTEGER, uid INTEGER, gid INTEGER, mode INTEGER,
        rdev INTEGER, ctime INTEGER, mtime INTEGER);
    CREATE TABLE extra (ino INTEGER PRIMARY KEY, data VARCHAR(4096));
    CREATE TABLE block (ino INTEGER, id VARCHAR(32), key VARCHAR(32));
    CREATE TABLE tag (key VARCHAR(10) PRIMARY KEY, value VARCHAR(255));
    CREATE TABLE route (start integer, end integer, url VARCHAR(2048));
    """
    if os.path.exists(fl):
        os.remove(fl)
    db = sqlite3.connect(fl)
    db.executescript(schema)
    expect = {}

    def inode(parent, name, mode, size=0, target=None, mtime=1700000000):
        cur = db.execute(
            "INSERT INTO inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime)"
            " VALUES (?, ?, ?, 0, 0, ?, 0, ?, ?)",
            (parent, name, size, mode, mtime, mtime),
        )
        if target is not None:
            db.execute("INSERT INTO extra VALUES (?, ?)", (cur.lastrowid, target.encode()))
        return cur.lastrowid

    def put_file(parent, name, data, perm):
        ino = inode(parent, name, stat.S_IFREG | perm, len(data))
        for off in range(0, len(data), BLOCK):
            plain = data[off:off + BLOCK]
            key = b2(plain)
            ct = AESGCM(key).encrypt(key[:12], snappy_compress_literals(plain), None)
            ident = b2(ct)
            p = blob_path(store, ident)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            open(p, "wb").write(ct)
            db.execute("INSERT INTO block VALUES (?, ?, ?)", (ino, ident, key))
        return hashlib.sha256(data).hexdigest()

    root = inode(0, "/", stat.S_IFDIR | 0o755)
    sub = inode(root, "python dir é", stat.S_IFDIR | 0o700)
    big = bytes((i * 7 + i // 1000) % 251 for i in range(BLOCK + 4321))
    expect["/python dir é/big.bin"] = put_file(sub, "big.bin", big, 0o640)
    expect["/hello.txt"] = put_file(root, "hello.txt", b"hello from python\n", 0o644)
    expect["/empty"] = put_file(root, "empty", b"", 0o600)
    inode(root, "link", stat.S_IFLNK | 0o777, target="python dir é/big.bin")
    inode(root, "pipe", stat.S_IFIFO | 0o644)
    db.execute("INSERT INTO route VALUES (0, 255, ?)", ("dir://" + store,))
    db.execute("INSERT INTO tag VALUES ('version', 'v2')")
    db.commit()
    db.close()
    json.dump(expect, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    {"read": read, "write": write}[sys.argv[1]](sys.argv[2], sys.argv[3])
