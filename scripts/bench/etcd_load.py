#!/usr/bin/env python3
"""Closed-loop put load against etcd's v3 JSON gateway: N client threads, each with its
own keep-alive connection, for a fixed time. Prints: ops/s p50_ms p99_ms count.

Usage: etcd_load.py ENDPOINT CLIENTS SECONDS   (ENDPOINT like 127.0.0.1:8501)
"""
import base64
import http.client
import json
import sys
import threading
import time


def main():
    endpoint, clients, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    host, port = endpoint.split(":")
    latencies = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(cid):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        mine = []
        n = 0
        while time.monotonic() < deadline:
            n += 1
            key = base64.b64encode(f"bench.{(cid * 7919 + n) % 1000}".encode()).decode()
            body = json.dumps({"key": key, "value": base64.b64encode(b"v").decode()})
            t0 = time.monotonic()
            conn.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"etcd answered {resp.status}")
            mine.append(time.monotonic() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    print(f"{len(latencies) / elapsed:.1f} {p(0.50):.2f} {p(0.99):.2f} {len(latencies)}")


if __name__ == "__main__":
    main()
