#!/usr/bin/env python3
"""Deterministic monitoring-like data for measuring memory per point (no downloads, std only).

Usage:
    scripts/gen_data.py [--kind realistic|random|counters] [--series N] [--points N] [--seed S]

Writes `metric value timestamp` lines, the input of `metrics put -`, to stdout. Values are printed
as Python's repr(float), so they read back exactly; timestamps are whole seconds. The same
arguments always give the same bytes: every series draws from its own random.Random seeded from
(seed, kind, series index), so the output does not depend on how series interleave.

Every series gets --points / --series points (the first `points % series` get one more). Lines
come in time order, as a collector sends them: each round, every series that is due emits one
point; ties are broken by series index. Series keep their own interval, so a 300 s series spans a
longer time than a 10 s one with the same number of points.

Timestamps (all kinds): an interval of 10 s (30%), 60 s (45%) or 300 s (25%) from a per-series
phase. Realistic and random series are exact for 60% of series; 30% move 5% of their points by
+-1 s, and 10% move 30% of them (clock jitter of a busy collector). One point in 1000 starts a gap
of 1-10 missed intervals (a restart). Counters have no jitter and no gaps.

--kind realistic, a host-monitoring mix (share of series, what the values look like):
    15% cpu.pct        CPU utilisation in percent, 3 decimals (0.132, 51.846): a mean-reverting
                       walk around a per-series level, with occasional spikes.
    10% cpu.total      the same, summed from user/system/iowait parts in float, so about 30% of
                       the values carry binary noise (94.79799999999999, 12.340000000000002).
     5% load.avg       load averages, 2 decimals, smooth (an exponential average).
     5% mem.pct        memory use, 1 decimal, changes slowly and often not at all.
    10% temp           machine temperatures, 8 decimals (73.96732207), slowly varying.
    10% net.bytes      network byte counters: integers growing by rate * elapsed seconds, the rate
                       following a daily cycle with 20% noise (1e2 to 1e6 bytes/s).
    10% http.requests  request counters: integers growing by Poisson counts (0.1 to 1000 per
                       interval).
    10% events         integer event counts per interval (Poisson, 0.5 to 500, daily cycle).
     5% traffic.speed  traffic sensors: integer speeds around 60 with noise and congestion dips.
    15% status         long constant stretches (up = 1.0, disk size, a config value): the value
                       changes about once in 500 points.
     5% latency.avg    a ratio computed in float (sum of milliseconds / count): full-precision
                       doubles such as 12.345678901234567, the hardest realistic case.

--kind counters: integer request counters only (Poisson increments, 0.01 to 1000 per interval,
log-uniform), at exact intervals with no jitter or gaps: what a 1 byte/point target is about.

--kind random: the same timestamps as realistic, values uniformly random 64-bit patterns that
are finite doubles (all exponents, both signs, subnormals): the worst case for any coder.
"""

import argparse
import heapq
import math
import random
import struct
import sys

START = 1_700_000_000

INTERVALS = ((10, 0.30), (60, 0.45), (300, 0.25))
JITTER = ((0.0, 0.60), (0.05, 0.30), (0.30, 0.10))
GAP_P = 0.001

REALISTIC = (
    ("cpu.pct", 15),
    ("cpu.total", 10),
    ("load.avg", 5),
    ("mem.pct", 5),
    ("temp", 10),
    ("net.bytes", 10),
    ("http.requests", 10),
    ("events", 10),
    ("traffic.speed", 5),
    ("status", 15),
    ("latency.avg", 5),
)


def pick(rng, weighted):
    total = sum(w for _, w in weighted)
    x = rng.random() * total
    for item, w in weighted:
        x -= w
        if x < 0:
            return item
    return weighted[-1][0]


def poisson(rng, lam):
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def daily(t):
    """A daily cycle between 0.5 and 1.5, peaking in the afternoon."""
    return 1.0 + 0.5 * math.sin(2 * math.pi * (t % 86400) / 86400 - 1.3)


def timestamps(rng, n, interval, jitter_p, gaps):
    t = START - START % interval + rng.randrange(interval)
    for _ in range(n):
        if gaps and rng.random() < GAP_P:
            t += interval * rng.randint(1, 10)
        shift = rng.choice((-1, 1)) if jitter_p and rng.random() < jitter_p else 0
        yield t + shift
        t += interval


def cpu_pct(rng):
    level = rng.uniform(0.5, 60)
    sd = rng.uniform(0.3, 6)
    x = level

    def step(t):
        nonlocal x
        x += 0.3 * (level - x) + rng.gauss(0, sd)
        if rng.random() < 0.01:
            x = rng.uniform(level, 100)
        x = min(100.0, max(0.0, x))
        return round(x, 3)

    return step


def cpu_total(rng):
    pct = cpu_pct(rng)

    def step(t):
        x = pct(t)
        user = round(x * rng.uniform(0.5, 0.8), 3)
        system = round((x - user) * rng.uniform(0.6, 0.9), 3)
        iowait = round(max(0.0, x - user - system), 3)
        return user + system + iowait

    return step


def load_avg(rng):
    cores = rng.choice((1, 2, 4, 8, 16))
    load = rng.uniform(0, cores)

    def step(t):
        nonlocal load
        load = load * 0.92 + poisson(rng, cores * rng.uniform(0.1, 0.9)) * 0.08
        return round(load, 2)

    return step


def mem_pct(rng):
    x = rng.uniform(20, 90)

    def step(t):
        nonlocal x
        if rng.random() < 0.3:
            x = min(99.9, max(1.0, x + rng.gauss(0, 0.4)))
        return round(x, 1)

    return step


def temp(rng):
    level = rng.uniform(30, 90)
    x = level

    def step(t):
        nonlocal level, x
        if rng.random() < 0.002:
            level = rng.uniform(30, 90)
        x += 0.05 * (level - x) + rng.gauss(0, 0.02)
        return round(x, 8)

    return step


def net_bytes(rng):
    base = 10 ** rng.uniform(2, 6)
    total = rng.randrange(10**12)
    last = None

    def step(t):
        nonlocal total, last
        if last is not None:
            total += int(base * daily(t) * math.exp(rng.gauss(0, 0.2)) * (t - last))
        last = t
        return float(total)

    return step


def counter(rng, lam):
    total = rng.randrange(10**7)

    def step(t):
        nonlocal total
        total += poisson(rng, lam)
        return float(total)

    return step


def http_requests(rng):
    return counter(rng, 10 ** rng.uniform(-1, 3))


def events(rng):
    lam = 10 ** rng.uniform(math.log10(0.5), math.log10(500))
    return lambda t: float(poisson(rng, lam * daily(t)))


def traffic_speed(rng):
    level = rng.uniform(45, 75)
    jam = 0

    def step(t):
        nonlocal jam
        if jam == 0 and rng.random() < 0.005:
            jam = rng.randint(5, 40)
        speed = level * (0.4 if jam else 1.0) + rng.gauss(0, 3)
        jam = max(0, jam - 1)
        return float(max(0, round(speed)))

    return step


def status(rng):
    choices = (0.0, 1.0, 4.0, 16384.0, 500107862016.0, 99.5, 3.3, 2048.0)
    v = rng.choice(choices)

    def step(t):
        nonlocal v
        if rng.random() < 0.002:
            v = rng.choice(choices)
        return v

    return step


def latency_avg(rng):
    mean = 10 ** rng.uniform(0, 3)
    lam = 10 ** rng.uniform(1, 3)

    def step(t):
        count = max(1, poisson(rng, lam))
        sample = min(count, 8)
        total = sum(round(rng.expovariate(1 / mean), 3) for _ in range(sample))
        return round(total * count / sample, 3) / count

    return step


VALUES = {
    "cpu.pct": cpu_pct,
    "cpu.total": cpu_total,
    "load.avg": load_avg,
    "mem.pct": mem_pct,
    "temp": temp,
    "net.bytes": net_bytes,
    "http.requests": http_requests,
    "events": events,
    "traffic.speed": traffic_speed,
    "status": status,
    "latency.avg": latency_avg,
}


def random_double(rng):
    def step(t):
        while True:
            bits = rng.getrandbits(64)
            if (bits >> 52) & 0x7FF != 0x7FF:
                return struct.unpack("<d", struct.pack("<Q", bits))[0]

    return step


def series(kind, seed, index, n):
    """Yields (timestamp, index, line) for one series."""
    rng = random.Random(f"{seed}/{kind}/{index}")
    interval = pick(rng, INTERVALS)
    if kind == "counters":
        name, jitter_p, gaps = "http.requests", 0.0, False
        values = counter(rng, 10 ** rng.uniform(-2, 3))
    elif kind == "random":
        name, jitter_p, gaps = "random", pick(rng, JITTER), True
        values = random_double(rng)
    else:
        name = pick(rng, REALISTIC)
        values, jitter_p, gaps = VALUES[name](rng), pick(rng, JITTER), True
    metric = f"{name}.{index:05d}"
    for t in timestamps(rng, n, interval, jitter_p, gaps):
        yield t, index, f"{metric} {values(t)!r} {t}\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("realistic", "random", "counters"), default="realistic")
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1_000_000, help="points in all")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.series < 1 or args.points < 0:
        parser.error("--series must be at least 1 and --points at least 0")
    per, extra = divmod(args.points, args.series)
    streams = [
        series(args.kind, args.seed, i, per + (1 if i < extra else 0)) for i in range(args.series)
    ]
    out = sys.stdout
    batch = []
    try:
        for _, _, line in heapq.merge(*streams):
            batch.append(line)
            if len(batch) >= 4096:
                out.write("".join(batch))
                batch.clear()
        out.write("".join(batch))
        out.flush()
    except BrokenPipeError:
        sys.stderr.close()


if __name__ == "__main__":
    main()
