#!/usr/bin/env python3
"""Splits a perf profile of the server into where its CPU goes.

    perf record --call-graph dwarf,16384 -F 499 -p <server pid> -o perf.data -- sleep 10
    python3 bench/profile-split.py perf.data          # or: perf script -i perf.data | ... -

Each sample is put in the first category (in the order below) that any frame
of its call chain matches, so a shape cast inside the avatar controller counts
for the controller, not for physics, and a page fault inside the snapshot
encoder counts for the encoder. Samples whose stack never leaves the kernel's
network and io_uring paths count as kernel I/O. Prints a table and the top
leaf functions of the largest categories.
"""

import collections
import re
import subprocess
import sys

# (category, regular expressions any frame may match). Order matters: the
# first category wins. Names are matched at word starts so that, say,
# glommio's `uring::` is not taken for the `ring` crate, nor `skip_` for `ip_`.
CATEGORIES = [
    ("avatar controller", [r"KinematicCharacterController", r"character_controller", r"drive_avatar"]),
    ("snapshot encode + capture", [r"net::snapshot", r"ClientSnapshots", r"WorldFrame", r"send_snapshot"]),
    ("str0m SCTP", [r"\bsctp"]),
    ("str0m DTLS + crypto", [r"\bdimpl::", r"[Dd]tls", r"\baws_lc", r"\baes", r"\bgcm", r"_gcm", r"\bring::", r"\bsha2", r"\bhmac"]),
    ("str0m other (ICE, STUN, RTC)", [r"\bstr0m"]),
    ("physics (rapier)", [r"\brapier", r"\bparry", r"\bnalgebra"]),
    ("protocol decode + inputs", [r"\bnet::codec", r"\bnet::input", r"\bnet::frame", r"\brkyv", r"\bbytecheck"]),
    ("kernel I/O", [r"io_uring", r"\bio_", r"\b_*udp", r"sendmsg", r"recvmsg", r"\b_*ip_", r"\b_*sys_", r"\bsock_", r"skb", r"net_rx", r"softirq", r"loopback", r"\bnf_"]),
    ("shard bookkeeping + glommio", [r"\bglommio", r"instanceserver::shard", r"BinaryHeap", r"hashbrown"]),
    ("allocator", [r"\bmi_", r"_mi_", r"\bmalloc", r"\bfree\b", r"_int_free", r"mimalloc"]),
]
COMPILED = [(name, re.compile("|".join(needles))) for name, needles in CATEGORIES]


def samples(lines):
    """Yields each sample's frames (symbol + dso text), leaf first."""
    frames = []
    in_sample = False
    for line in lines:
        if not line.strip():
            if frames:
                yield frames
            frames, in_sample = [], False
            continue
        if line.startswith((" ", "\t")):
            if in_sample:
                parts = line.strip().split(None, 1)
                frames.append(parts[1] if len(parts) > 1 else parts[0])
        else:
            in_sample = True
    if frames:
        yield frames


def category(frames):
    for name, pattern in COMPILED:
        for f in frames:
            if pattern.search(f):
                return name
    if frames and "kernel" in frames[0]:
        return "kernel (other)"
    return "other"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if sys.argv[1] == "-":
        lines = sys.stdin
    else:
        proc = subprocess.Popen(
            ["perf", "script", "-i", sys.argv[1], "-F", "comm,tid,time,ip,sym,dso"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
        lines = proc.stdout
    counts = collections.Counter()
    leaves = collections.defaultdict(collections.Counter)
    total = 0
    for frames in samples(lines):
        c = category(frames)
        counts[c] += 1
        leaves[c][frames[0].split(" (")[0][:90]] += 1
        total += 1
    if total == 0:
        sys.exit("no samples: was the profile recorded with --call-graph dwarf?")
    print(f"| where | share | samples |")
    print(f"|---|---:|---:|")
    for c, n in counts.most_common():
        print(f"| {c} | {100.0 * n / total:.1f}% | {n} |")
    print(f"| total | 100% | {total} |")
    print()
    for c, _ in counts.most_common(4):
        print(f"{c}: top leaf functions")
        for leaf, n in leaves[c].most_common(5):
            print(f"  {100.0 * n / total:5.1f}%  {leaf}")


if __name__ == "__main__":
    main()
