#!/usr/bin/env python3
"""Load for `switchboard proxy` (docs/benchmarks.md): echo round trips through a URL, from
several client processes, with the server's CPU time per message read from /proc.

  python3 scripts/proxy-bench.py rtt URL [--messages 2000]
  python3 scripts/proxy-bench.py throughput URL --connections 8 --window 32 --seconds 10 [--pid PID]

`rtt` sends one message at a time and reports p50/p99 round trips; `throughput` keeps
`window` messages in flight on each connection and reports echoes per second and, with
--pid, that process's CPU microseconds per echo (user + system, from /proc/PID/stat).
Needs `pip install websockets`. Targets must be loopback addresses."""
import argparse
import asyncio
import multiprocessing
import os
import time

import websockets


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rtt(url, messages):
    samples = []
    async with websockets.connect(url, max_size=None) as ws:
        for n in range(messages):
            start = time.perf_counter()
            await ws.send(f"m{n}")
            await ws.recv()
            samples.append(time.perf_counter() - start)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000
    print(f"rtt {url}: {messages} round trips, p50 {pick(0.5):.3f} ms, p99 {pick(0.99):.3f} ms, p99.9 {pick(0.999):.3f} ms")


async def pump(url, window, seconds, counter):
    async with websockets.connect(url, max_size=None) as ws:
        deadline = time.time() + seconds
        in_flight = asyncio.Semaphore(window)
        done = 0

        async def reader():
            nonlocal done
            async for _ in ws:
                done += 1
                in_flight.release()

        task = asyncio.create_task(reader())
        n = 0
        while time.time() < deadline:
            await in_flight.acquire()
            await ws.send(f"m{n}")
            n += 1
        for _ in range(window):  # wait for the last echoes (bounded)
            try:
                await asyncio.wait_for(in_flight.acquire(), 5)
            except asyncio.TimeoutError:
                break
        task.cancel()
        counter.value += done


def worker(url, window, seconds, counter):
    asyncio.run(pump(url, window, seconds, counter))


def throughput(url, connections, window, seconds, pid):
    counter = multiprocessing.Value("q", 0, lock=True)
    before = cpu_seconds(pid) if pid else None
    start = time.time()
    workers = [multiprocessing.Process(target=worker, args=(url, window, seconds, counter)) for _ in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.time() - start
    echoes = counter.value
    line = f"throughput {url}: {connections} connections × window {window}: {echoes} echoes in {elapsed:.1f} s = {echoes / elapsed:,.0f}/s"
    if pid:
        cpu = cpu_seconds(pid) - before
        line += f"; pid {pid} CPU {cpu:.2f} s = {cpu / max(echoes, 1) * 1e6:.1f} µs per echo (two messages relayed)"
    print(line)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["rtt", "throughput"])
    parser.add_argument("url")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--pid", type=int)
    args = parser.parse_args()
    host = args.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
    if not (host.startswith("127.") or host in ("localhost", "[::1]")):
        raise SystemExit("only loopback targets")
    if args.mode == "rtt":
        asyncio.run(rtt(args.url, args.messages))
    else:
        throughput(args.url, args.connections, args.window, args.seconds, args.pid)


if __name__ == "__main__":
    main()
