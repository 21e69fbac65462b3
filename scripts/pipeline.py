#!/usr/bin/env python3
"""Sends request lines to a metrics server, pipelined, and counts the replies: for scripts/bench.sh.

Usage:
    scripts/pipeline.py --addr HOST:PORT [--window N] [--print] < requests

Reads every request line (e.g. `get bench.key0 1700000000 1700000099`) from stdin, then sends them
on one connection with at most --window (default 1000) requests awaiting their reply, and prints
`replies R lines L errors E seconds S` on stdout: L counts the point lines of all replies, S is
the time from the first byte sent to the last reply read. With --print, the replies themselves go
to stdout instead (for `stats`). A reply is a status line, its point lines and one empty line, and
point lines are never empty, so a reply ends exactly where "\n\n" occurs. Exit status 1 on a
connection failure or an error reply. Std only.
"""

import argparse
import socket
import sys
import threading
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--print", action="store_true", help="print the replies")
    args = parser.parse_args()

    requests = [line.rstrip(b"\n") + b"\n" for line in sys.stdin.buffer if line.strip()]
    host, port = args.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # The sender may run at most `window` requests ahead of the replies read so far.
    window = max(1, args.window)
    done = threading.Condition()
    state = {"replies": 0, "failed": None}

    def send():
        sent, batch = 0, max(1, min(window // 2, 1000))
        try:
            while sent < len(requests):
                with done:
                    while sent - state["replies"] + batch > window and state["failed"] is None:
                        done.wait()
                    if state["failed"] is not None:
                        return
                part = requests[sent : sent + batch]
                sock.sendall(b"".join(part))
                sent += len(part)
        except OSError as e:
            with done:
                state["failed"] = e
                done.notify_all()

    started = time.perf_counter()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    newlines, replies, tail, errors = 0, 0, b"", 0
    out = sys.stdout.buffer
    try:
        while replies < len(requests):
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise OSError("server closed the connection after %d replies" % replies)
            if args.print:
                out.write(chunk)
            joined = tail + chunk
            # Count the "\n\n" and "error\n" that end in this chunk (the tail is already counted).
            found = joined.count(b"\n\n") - tail.count(b"\n\n")
            errors += joined.count(b"error\n") - tail.count(b"error\n")
            newlines += chunk.count(b"\n")
            tail = joined[-6:]
            replies += found
            with done:
                state["replies"] = replies
                done.notify_all()
    except OSError as e:
        print("pipeline: %s" % e, file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    sock.close()
    if not args.print:
        # Each reply has a status line and an empty line besides its points.
        lines = newlines - 2 * replies - errors
        print("replies %d lines %d errors %d seconds %.3f" % (replies, lines, errors, elapsed))
    if errors:
        print("pipeline: %d error replies" % errors, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
