"""A client written the way the protocol's Python course writes it, plus the checks its
graders make. Run against a live server: python3 course_client.py HOST PORT.
Exits 0 when every check passes; prints what differs and exits 1 otherwise."""

import socket
import sys
import time


class ClientError(Exception):
    pass


class Client:
    def __init__(self, host, port, timeout=None):
        try:
            self.connection = socket.create_connection((host, port), timeout)
        except socket.error as err:
            raise ClientError("cannot connect", err)

    def _read(self):
        data = b""
        while not data.endswith(b"\n\n"):
            try:
                chunk = self.connection.recv(1024)
            except socket.error as err:
                raise ClientError("cannot read", err)
            if not chunk:
                raise ClientError("connection closed")
            data += chunk
        return data.decode("utf-8")

    def put(self, key, value, timestamp=None):
        timestamp = timestamp or int(time.time())
        self.connection.sendall(f"put {key} {value} {timestamp}\n".encode())
        if self._read() != "ok\n\n":
            raise ClientError("server returned an error")

    def get(self, key):
        self.connection.sendall(f"get {key}\n".encode())
        status, payload = self._read().split("\n", 1)
        if status != "ok":
            raise ClientError("server returned an error")
        data = {}
        for row in payload.strip().splitlines():
            try:
                metric, value, timestamp = row.split()
                data.setdefault(metric, []).append((int(timestamp), float(value)))
            except ValueError as err:
                raise ClientError("server returned invalid data", err)
        for points in data.values():
            points.sort(key=lambda p: p[0])
        return data


def raw(host, port, request):
    with socket.create_connection((host, port), 10) as sock:
        sock.sendall(request)
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    failures = []
    checks = []

    def check(what, got, expected):
        checks.append(what)
        if got != expected:
            failures.append(f"{what}: got {got!r}, expected {expected!r}")

    client = Client(host, port, timeout=15)
    client.put("palm.cpu", 0.5, timestamp=1150864247)
    client.put("palm.cpu", 2.0, timestamp=1150864248)
    client.put("palm.cpu", 0.5, timestamp=1150864248)
    client.put("eardrum.cpu", 3, timestamp=1150864250)
    client.put("eardrum.cpu", 4, timestamp=1150864251)
    client.put("eardrum.memory", 4200000)
    check("get palm.cpu", client.get("palm.cpu"),
          {"palm.cpu": [(1150864247, 0.5), (1150864248, 0.5)]})
    everything = client.get("*")
    check("get * keys", sorted(everything), ["eardrum.cpu", "eardrum.memory", "palm.cpu"])
    check("get * eardrum.cpu", everything["eardrum.cpu"],
          [(1150864250, 3.0), (1150864251, 4.0)])
    check("get unknown", client.get("no.such.metric"), {})

    check("raw put", raw(host, port, b"put test 0.5 1\n"), b"ok\n\n")
    check("raw get", raw(host, port, b"get test\n"), b"ok\ntest 0.5 1\n\n")
    check("raw wrong command", raw(host, port, b"get_client_command\n"),
          b"error\nwrong command\n\n")
    check("raw bad value", raw(host, port, b"put test x 1\n"), b"error\nwrong command\n\n")
    check("raw missing key", raw(host, port, b"get\n"), b"error\nwrong command\n\n")
    for value in [10.0, 0.1, 1e16, 1e-05, 123456789012345678.0, -0.0, 2.156, 1000.0]:
        client.put("float.text", value, timestamp=7)
        reply = raw(host, port, b"get float.text\n")
        check(f"float {value!r}", reply, f"ok\nfloat.text {value!r} 7\n\n".encode())

    checks.append("ClientError on a bad put")
    try:
        bad = Client(host, port, timeout=15)
        bad.connection.sendall(b"put only two\n")
        bad._read()
        bad.put("bad metric", 1)
        failures.append("a put with a space in the key did not raise ClientError")
    except ClientError:
        pass

    for failure in failures:
        print(failure)
    print(f"{len(checks) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
