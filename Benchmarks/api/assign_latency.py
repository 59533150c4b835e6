"""Assign latency: from the POST of an assign action to the moment GET /v2/actions/{id} says completed, as a client
polling the action sees it. Moves one reserved IP back and forth between two droplets (every assign after the first
is a reassign: leave one hypervisor, join the other). Prints p50/p99 in ms.

usage: assign_latency.py API TOKEN IP DROPLET_A DROPLET_B COUNT
"""
import json
import sys
import time
import urllib.request

api, token, ip, first, second, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])


def call(method, path, body=None):
    request = urllib.request.Request(api + path, data=json.dumps(body).encode() if body is not None else None, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


latencies = []
for index in range(count):
    target = second if index % 2 == 0 else first  # the IP starts on the first
    start = time.perf_counter()
    action = call("POST", f"/v2/reserved_ips/{ip}/actions", {"type": "assign", "droplet_id": target})["action"]
    while True:
        state = call("GET", f"/v2/actions/{action['id']}")["action"]
        if state["status"] != "in-progress":
            break
        time.sleep(0.001)
    if state["status"] != "completed":
        sys.exit(f"assign {action['id']} ended {state['status']}")
    latencies.append((time.perf_counter() - start) * 1000)

latencies.sort()
print(f"assigns: {count}; p50 ms: {latencies[len(latencies) // 2]:.1f}")
print(f"assign p99 ms: {latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]:.1f}")
