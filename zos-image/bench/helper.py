#!/usr/bin/env python3
"""Helpers for bench/run.sh: an rfs-style SQLite index, timed reads, a free loopback port."""

import hashlib
import json
import os
import socket
import sqlite3
import stat
import sys
import time

RFS_BLOCK = 512 * 1024

# The schema of the SQLite index used by the existing flist implementation (rfs).
RFS_SCHEMA = """
CREATE TABLE inode (ino INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER, name VARCHAR(255),
                    size INTEGER, uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER,
                    ctime INTEGER, mtime INTEGER);
CREATE INDEX parents ON inode (parent);
CREATE INDEX names ON inode (name);
CREATE TABLE extra (ino INTEGER PRIMARY KEY, data VARCHAR(4096));
CREATE TABLE block (ino INTEGER, id VARCHAR(32), key VARCHAR(32));
CREATE INDEX block_ino ON block (ino);
CREATE TABLE tag (key VARCHAR(10) PRIMARY KEY, value VARCHAR(255));
CREATE TABLE route (start INTEGER, end INTEGER, url VARCHAR(2048));
"""


def rfs_index(tree, out):
    """Build the rfs-style index of `tree`: one row per inode, one per 512 KiB block with
    key = BLAKE2b-256(block) and id = BLAKE2b-256 of the (here: simulated) ciphertext."""
    if os.path.exists(out):
        os.unlink(out)
    db = sqlite3.connect(out)
    db.executescript(RFS_SCHEMA)
    next_ino = [0]

    def add(path, parent, name):
        st = os.lstat(path)
        next_ino[0] += 1
        ino = next_ino[0]
        db.execute(
            "INSERT INTO inode VALUES (?,?,?,?,?,?,?,?,?,?)",
            (ino, parent, name, st.st_size, st.st_uid, st.st_gid, st.st_mode, st.st_rdev,
             int(st.st_ctime), int(st.st_mtime)),
        )
        if stat.S_ISLNK(st.st_mode):
            db.execute("INSERT INTO extra VALUES (?,?)", (ino, os.readlink(path)))
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                while True:
                    block = f.read(RFS_BLOCK)
                    if not block:
                        break
                    key = hashlib.blake2b(block, digest_size=32).digest()
                    block_id = hashlib.blake2b(key, digest_size=32).digest()
                    db.execute("INSERT INTO block VALUES (?,?,?)", (ino, block_id, key))
        elif stat.S_ISDIR(st.st_mode):
            for child in sorted(os.listdir(path)):
                add(os.path.join(path, child), ino, child)

    add(tree, 0, "/")
    db.execute("INSERT INTO tag VALUES ('version', '1')")
    db.commit()
    db.execute("VACUUM")
    db.close()
    print(os.path.getsize(out))


def read_tree(root):
    """Read every regular file under root in name order; print bytes and seconds."""
    total = 0
    start = time.monotonic()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            with open(p, "rb", buffering=0) as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    total += len(b)
    print(json.dumps({"bytes": total, "seconds": time.monotonic() - start}))


def read_file(path):
    start = time.monotonic()
    total = 0
    buf = bytearray(1 << 20)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
    print(json.dumps({"bytes": total, "seconds": time.monotonic() - start}))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def du_files(root):
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    print(total)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"rfs-index": rfs_index, "read-tree": read_tree, "read-file": read_file,
     "free-port": free_port, "du-files": du_files}[cmd](*args)
