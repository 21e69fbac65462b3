#!/usr/bin/env python3
"""A Graphite plaintext upstream that reads and discards: the fast upstream of scripts/bench.sh.

Usage:
    scripts/sink.py [--expect N]

Listens on a free loopback port and prints `listening on 127.0.0.1:PORT` on stdout once bound,
like `metrics server 0`. Accepts any number of connections and reads them to the end, counting
lines, and keeps nothing. With --expect N it prints `received LINES lines at EPOCH-SECONDS` once
N lines have arrived in all (at-least-once delivery may send more), so a benchmark can time how
long forwarding took to drain; and `idle LINES lines at EPOCH-SECONDS` (the time of the last
byte) when fewer came and nothing more arrived for --idle seconds, so it need not wait for points
that were dropped. Runs until killed; std only.
"""

import argparse
import socket
import struct
import threading
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", type=int, default=0, help="report when this many lines came")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds without data for 'idle'")
    args = parser.parse_args()

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print("listening on 127.0.0.1:%d" % listener.getsockname()[1], flush=True)

    lock = threading.Lock()
    state = {"lines": 0, "reported": False, "last": 0.0}

    def watch():
        idle_reported = -1
        while True:
            time.sleep(0.2)
            with lock:
                lines, last, reported = state["lines"], state["last"], state["reported"]
            if reported:
                return
            if lines and lines != idle_reported and time.time() - last >= args.idle:
                idle_reported = lines
                print("idle %d lines at %.3f" % (lines, last), flush=True)

    if args.expect:
        threading.Thread(target=watch, daemon=True).start()

    def serve(conn):
        # Large reads, counted in place: the sink should cost as little CPU as it can, since
        # it shares the machine with what it measures. The kernel wakes it once 256 KiB are
        # there (SO_RCVLOWAT), not per segment, and after 50 ms (SO_RCVTIMEO) for what is
        # left: a read then returns what came, or fails with EAGAIN when nothing did.
        buf = bytearray(4 << 20)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 256 << 10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 50000))
        with conn:
            while True:
                try:
                    n = conn.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if n == 0:
                    return
                lines = buf.count(b"\n", 0, n)
                with lock:
                    state["lines"] += lines
                    state["last"] = time.time()
                    if args.expect and not state["reported"] and state["lines"] >= args.expect:
                        state["reported"] = True
                        print("received %d lines at %.3f" % (state["lines"], time.time()), flush=True)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
