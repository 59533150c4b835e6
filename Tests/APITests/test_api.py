"""The customer API, end to end: a cluster started by shoal-local (real processes on 127.0.0.1), driven through the
official DigitalOcean Python client pydo (unmodified, pointed at our base URL) and through plain HTTP for what a
client library hides (status codes, headers, error bodies).

Environment: SHOAL_API (base URL), SHOAL_DATA (the cluster's data directory, for pid files). Tokens: alice-token,
bob-token, dave-token (generous limits), carol-token (5 requests a minute).
"""
import json
import os
import random
import signal
import threading
import time
import unittest
import urllib.error
import urllib.request

from azure.core.exceptions import HttpResponseError, ClientAuthenticationError
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from pydo import Client

API = os.environ.get("SHOAL_API", "http://127.0.0.1:8080")
DATA = os.environ.get("SHOAL_DATA", ".shoal")
DEADLINE = 60.0


class PlainHTTPBearer(BearerTokenCredentialPolicy):
    """azure-core refuses bearer tokens over plain http; the test cluster speaks plain http on 127.0.0.1."""

    def on_request(self, request):
        request.context["enforce_https"] = False
        super().on_request(request)


def pydo(token):
    """pydo as a customer would use it, pointed at our base URL; no retries, so every status is seen as sent."""
    from pydo._patch import TokenCredentials
    return Client(
        token=token, endpoint=API, retry_total=0,
        authentication_policy=PlainHTTPBearer(TokenCredentials(token), "https://api.digitalocean.com/.default"),
    )


def http(method, path, token="alice-token", body=None, raw=None, headers=None):
    """One request; returns (status, headers, parsed JSON body or None)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(API + path, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
            return response.status, response.headers, (json.loads(payload) if payload else None)
    except urllib.error.HTTPError as error:
        payload = error.read()
        return error.code, error.headers, (json.loads(payload) if payload else None)


def wait_for(condition, what, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_action(action_id, token="alice-token"):
    """Polls /v2/actions/{id} until the action is completed or errored; returns it."""
    def finished():
        status, _, body = http("GET", f"/v2/actions/{action_id}", token)
        if status == 200 and body["action"]["status"] != "in-progress":
            return body["action"]
        return None
    return wait_for(finished, f"action {action_id}")


def new_droplet(token="alice-token", region="nyc1", name="web"):
    status, _, body = http("POST", "/v2/droplets", token, {"name": name, "region": region, "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"})
    assert status == 202, (status, body)
    action = wait_action(body["links"]["actions"][0]["id"], token)
    assert action["status"] == "completed", action
    return body["droplet"]["id"]


class Shapes(unittest.TestCase):
    def assert_error(self, status, body, code, error_id):
        self.assertEqual(status, code, body)
        self.assertEqual(body["id"], error_id)
        self.assertIsInstance(body["message"], str)
        self.assertTrue(body["message"])
        self.assertTrue(body.get("request_id"))


class CatalogTests(Shapes):
    def test_regions_and_sizes_through_pydo(self):
        client = pydo("alice-token")
        regions = client.regions.list()
        self.assertEqual([r["slug"] for r in regions["regions"]], ["nyc1", "sfo3"])
        for region in regions["regions"]:
            self.assertEqual(set(region), {"name", "slug", "features", "available", "sizes"})
        self.assertEqual(regions["meta"]["total"], 2)
        self.assertEqual(regions["links"], {})
        sizes = client.sizes.list(per_page=2, page=2)
        self.assertEqual(len(sizes["sizes"]), 2)
        for size in sizes["sizes"]:
            for key in ["slug", "memory", "vcpus", "disk", "transfer", "price_monthly", "price_hourly", "regions", "available", "description"]:
                self.assertIn(key, size)
        pages = sizes["links"]["pages"]
        self.assertEqual(pages["first"], f"{API}/v2/sizes?page=1&per_page=2")
        self.assertEqual(pages["prev"], f"{API}/v2/sizes?page=1&per_page=2")
        self.assertEqual(pages["next"], f"{API}/v2/sizes?page=3&per_page=2")
        self.assertEqual(pages["last"], f"{API}/v2/sizes?page=4&per_page=2")


class DropletTests(Shapes):
    def test_droplet_lifecycle_and_power_actions_through_pydo(self):
        client = pydo("alice-token")
        created = client.droplets.create(body={
            "name": "api-web-1", "region": "nyc1", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64",
            "ssh_keys": [], "backups": False, "vpc_uuid": None, "volumes": None, "tags": [],
        })
        droplet = created["droplet"]
        self.assertEqual(droplet["status"], "new")
        self.assertEqual(droplet["networks"], {"v4": [], "v6": []})
        for key in ["id", "name", "memory", "vcpus", "disk", "locked", "status", "created_at", "features", "backup_ids",
                    "next_backup_window", "snapshot_ids", "image", "volume_ids", "size", "size_slug", "networks", "region", "tags"]:
            self.assertIn(key, droplet)
        link = created["links"]["actions"][0]
        self.assertEqual(link["rel"], "create")
        self.assertEqual(link["href"], f"{API}/v2/actions/{link['id']}")
        create = wait_action(link["id"])
        self.assertEqual(create["status"], "completed")
        self.assertEqual((create["type"], create["resource_type"], create["resource_id"]), ("create", "droplet", droplet["id"]))
        active = client.droplets.get(droplet["id"])["droplet"]
        self.assertEqual(active["status"], "active")
        self.assertEqual(active["networks"]["v4"][0]["type"], "public")
        # Read after write: the list agrees with the completed create.
        listed = client.droplets.list(name="API-WEB-1")
        self.assertEqual([d["id"] for d in listed["droplets"]], [droplet["id"]])
        self.assertEqual(listed["droplets"][0]["status"], "active")

        for kind, status in [("power_off", "off"), ("power_on", "active"), ("reboot", "active"), ("shutdown", "off"), ("power_cycle", "active")]:
            action = client.droplet_actions.post(droplet["id"], {"type": kind})["action"]
            self.assertEqual((action["type"], action["status"]), (kind, "in-progress"))
            done = wait_action(action["id"])
            self.assertEqual(done["status"], "completed")
            self.assertEqual(client.droplets.get(droplet["id"])["droplet"]["status"], status, kind)
            self.assertEqual(client.droplet_actions.get(droplet["id"], action["id"])["action"]["id"], action["id"])
        actions = client.droplet_actions.list(droplet["id"], per_page=2, page=1)
        self.assertEqual(actions["meta"]["total"], 6)
        self.assertEqual([a["type"] for a in actions["actions"]], ["create", "power_off"])
        self.assertIn("next", actions["links"]["pages"])

        client.droplets.destroy(droplet["id"])
        wait_for(lambda: http("GET", f"/v2/droplets/{droplet['id']}")[0] == 404, "the droplet to be gone")
        # A documented 404 comes back from pydo as the error body.
        self.assertEqual(client.droplets.get(droplet["id"])["id"], "not_found")

    def test_one_action_at_a_time_and_unknown_types(self):
        droplet = new_droplet(name="api-busy")
        status, _, body = http("POST", f"/v2/droplets/{droplet}/actions", body={"type": "power_off"})
        self.assertEqual(status, 201, body)
        status, _, body = http("POST", f"/v2/droplets/{droplet}/actions", body={"type": "power_on"})
        self.assert_error(status, body, 422, "unprocessable_entity")
        self.assertIn("pending event", body["message"])
        wait_action(json.loads(json.dumps(http("GET", f"/v2/droplets/{droplet}/actions?per_page=200")[2]))["actions"][-1]["id"])
        status, _, body = http("POST", f"/v2/droplets/{droplet}/actions", body={"type": "fly"})
        self.assert_error(status, body, 422, "unprocessable_entity")
        status, _, body = http("POST", f"/v2/droplets/{droplet}/actions", body={"type": "resize", "size": "s-2vcpu-2gb"})
        self.assert_error(status, body, 422, "unprocessable_entity")
        status, _, body = http("POST", f"/v2/droplets/{droplet}/actions", body={})
        self.assert_error(status, body, 422, "unprocessable_entity")

    def test_pagination(self):
        client = pydo("dave-token")
        ids = []
        for index in range(5):
            ids.append(client.droplets.create(body={"name": f"page-{index}", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"})["droplet"]["id"])
        first = client.droplets.list(per_page=2, page=1)
        self.assertEqual(first["meta"]["total"], 5)
        self.assertEqual([d["id"] for d in first["droplets"]], ids[:2])
        self.assertEqual(set(first["links"]["pages"]), {"next", "last"})
        self.assertEqual(first["links"]["pages"]["last"], f"{API}/v2/droplets?page=3&per_page=2")
        middle = client.droplets.list(per_page=2, page=2)
        self.assertEqual([d["id"] for d in middle["droplets"]], ids[2:4])
        self.assertEqual(set(middle["links"]["pages"]), {"first", "prev", "next", "last"})
        last = client.droplets.list(per_page=2, page=3)
        self.assertEqual([d["id"] for d in last["droplets"]], ids[4:])
        self.assertEqual(set(last["links"]["pages"]), {"first", "prev"})
        everything = client.droplets.list(per_page=200)
        self.assertEqual(everything["links"], {})
        self.assertEqual(len(everything["droplets"]), 5)
        # Every action of the account, droplet and reserved-IP alike, in one paginated list.
        for action_page in [client.actions.list(per_page=3, page=1), client.actions.list(per_page=3, page=2)]:
            self.assertEqual(action_page["meta"]["total"], 5)
        self.assertEqual(len(client.actions.list(per_page=3, page=2)["actions"]), 2)
        self.assertEqual({a["type"] for a in client.actions.list(per_page=200)["actions"]}, {"create"})


class ReservedIPTests(Shapes):
    def test_lifecycle_through_pydo(self):
        client = pydo("alice-token")
        first, second = new_droplet(name="rip-a"), new_droplet(name="rip-b")
        project = "746c6152-2fa2-11ed-92d3-27aaa54e4988"
        reserved = client.reserved_ips.create(body={"region": "nyc1", "project_id": project})
        ip = reserved["reserved_ip"]
        self.assertEqual((ip["droplet"], ip["locked"], ip["project_id"], ip["region"]["slug"]), (None, False, project, "nyc1"))
        self.assertEqual(reserved["links"], {})
        address = ip["ip"]
        self.assertEqual(client.reserved_ips.get(address)["reserved_ip"]["ip"], address)
        self.assertIn(address, [r["ip"] for r in client.reserved_ips.list(per_page=200)["reserved_ips"]])

        # Assign, then reassign to another droplet with no unassign first, then unassign.
        assign = client.reserved_ips_actions.post(address, {"type": "assign", "droplet_id": first})["action"]
        self.assertEqual((assign["type"], assign["status"], assign["resource_type"], assign["project_id"]), ("assign_ip", "in-progress", "reserved_ip", project))
        self.assertTrue(client.reserved_ips.get(address)["reserved_ip"]["locked"])
        self.assertEqual(wait_action(assign["id"])["status"], "completed")
        on_first = client.reserved_ips.get(address)["reserved_ip"]
        self.assertEqual((on_first["droplet"]["id"], on_first["locked"]), (first, False))
        self.assertEqual(on_first["droplet"]["status"], "active")  # the whole droplet object is embedded
        reassign = client.reserved_ips_actions.post(address, {"type": "assign", "droplet_id": second})["action"]
        self.assertEqual(wait_action(reassign["id"])["status"], "completed")
        self.assertEqual(client.reserved_ips.get(address)["reserved_ip"]["droplet"]["id"], second)
        unassign = client.reserved_ips_actions.post(address, {"type": "unassign"})["action"]
        self.assertEqual(unassign["type"], "unassign_ip")
        self.assertEqual(wait_action(unassign["id"])["status"], "completed")
        after = client.reserved_ips.get(address)["reserved_ip"]
        self.assertEqual((after["droplet"], after["locked"], after["region"]["slug"]), (None, False, "nyc1"))
        actions = client.reserved_ips_actions.list(address)
        self.assertEqual([a["type"] for a in actions["actions"]], ["assign_ip", "assign_ip", "unassign_ip"])
        self.assertEqual(actions["meta"]["total"], 3)
        self.assertEqual(client.reserved_ips_actions.get(address, assign["id"])["action"]["status"], "completed")

        # Reserve straight to a droplet: an assign_ip action to wait on.
        direct = client.reserved_ips.create(body={"droplet_id": first})
        self.assertTrue(direct["reserved_ip"]["locked"])
        self.assertIsNone(direct["reserved_ip"]["droplet"])
        self.assertEqual(direct["links"]["droplets"][0]["id"], first)
        link = direct["links"]["actions"][0]
        self.assertEqual(link["rel"], "assign_ip")
        self.assertEqual(wait_action(link["id"])["status"], "completed")
        self.assertEqual(client.reserved_ips.get(direct["reserved_ip"]["ip"])["reserved_ip"]["droplet"]["id"], first)

        # Release, assigned or not, in one call; the actions stay queryable.
        client.reserved_ips.delete(direct["reserved_ip"]["ip"])
        self.assertEqual(http("GET", f"/v2/reserved_ips/{direct['reserved_ip']['ip']}")[0], 404)
        client.reserved_ips.delete(address)
        self.assertEqual(client.reserved_ips.get(address)["id"], "not_found")
        self.assertNotIn(address, [r["ip"] for r in client.reserved_ips.list(per_page=200)["reserved_ips"]])
        self.assertEqual(client.actions.get(reassign["id"])["action"]["status"], "completed")

    def test_floating_ip_alias(self):
        droplet = new_droplet(name="fip")
        status, _, body = http("POST", "/v2/floating_ips/", body={"region": "nyc1"})
        self.assertEqual(status, 202, body)
        address = body["floating_ip"]["ip"]
        status, _, body = http("GET", "/v2/floating_ips")
        self.assertIn(address, [f["ip"] for f in body["floating_ips"]])
        status, _, body = http("POST", f"/v2/floating_ips/{address}/actions/", body={"type": "assign", "droplet_id": droplet})
        self.assertEqual(status, 201, body)
        self.assertEqual(body["action"]["resource_type"], "floating_ip")
        wait_action(body["action"]["id"])
        status, _, body = http("GET", f"/v2/floating_ips/{address}")
        self.assertEqual(body["floating_ip"]["droplet"]["id"], droplet)
        # python-digitalocean sends DELETE with a {} body and a trailing slash.
        status, _, body = http("DELETE", f"/v2/floating_ips/{address}/", body={})
        self.assertEqual((status, body), (204, None))
        self.assertEqual(http("GET", f"/v2/reserved_ips/{address}")[0], 404)

    def test_documented_errors(self):
        droplet = new_droplet(name="errs")
        far = new_droplet(name="errs-far", region="sfo3")
        status, _, body = http("POST", "/v2/reserved_ips", body={"region": "nyc1"})
        address = body["reserved_ip"]["ip"]
        cases = [
            ("POST", f"/v2/reserved_ips/{address}/actions", {"type": "teleport"}, 422),
            ("POST", f"/v2/reserved_ips/{address}/actions", {"type": "assign"}, 422),  # no droplet_id
            ("POST", f"/v2/reserved_ips/{address}/actions", {"type": "assign", "droplet_id": far}, 422),  # another region
            ("POST", f"/v2/reserved_ips/{address}/actions", {"type": "unassign"}, 422),  # not assigned
            ("POST", "/v2/reserved_ips", {"region": "nyc1", "droplet_id": droplet}, 422),
            ("POST", "/v2/reserved_ips", {}, 422),
            ("POST", "/v2/reserved_ips", {"region": "mars1"}, 422),
            ("POST", "/v2/droplets", {"name": "x", "size": "s-99", "image": "ubuntu"}, 422),
            ("POST", "/v2/droplets", {"name": "bad name!", "size": "s-1vcpu-1gb", "image": "ubuntu"}, 422),
            ("POST", "/v2/droplets", {"size": "s-1vcpu-1gb", "image": "ubuntu"}, 422),
            ("POST", "/v2/droplets", [1, 2], 422),
            ("GET", "/v2/reserved_ips/203.0.113.250", None, 404),
            ("GET", "/v2/reserved_ips/not-an-ip", None, 404),
            ("GET", "/v2/droplets/999999", None, 404),
            ("GET", "/v2/droplets/abc", None, 404),
            ("GET", "/v2/actions/999999", None, 404),
            ("GET", "/v2/nothing-here", None, 404),
            ("DELETE", "/v2/droplets/999999", None, 404),
        ]
        for method, path, body, code in cases:
            status, headers, answer = http(method, path, body=body)
            expected = {400: "bad_request", 404: "not_found", 422: "unprocessable_entity"}[code]
            with self.subTest(method=method, path=path, body=body):
                self.assert_error(status, answer, code, expected)
                self.assertEqual(headers["x-request-id"], answer["request_id"])
        # Malformed JSON is a 400, sent raw through pydo as a client would.
        status, _, body = http("POST", "/v2/reserved_ips", raw=b'{"region": "nyc1",')
        self.assert_error(status, body, 400, "bad_request")
        self.assertEqual(body["message"], "error parsing request body")
        with self.assertRaises(HttpResponseError) as raised:
            pydo("alice-token").reserved_ips.create(body=b"{not json")
        self.assertEqual(raised.exception.status_code, 400)
        # A pending event refuses a second action and the release (doctl #493).
        assign = http("POST", f"/v2/reserved_ips/{address}/actions", body={"type": "assign", "droplet_id": droplet})[2]["action"]
        status, _, body = http("POST", f"/v2/reserved_ips/{address}/actions", body={"type": "unassign"})
        if status == 422:
            self.assertEqual(body["message"], "The reserved IP already has a pending event.")
            status, _, body = http("DELETE", f"/v2/reserved_ips/{address}")
            self.assert_error(status, body, 422, "unprocessable_entity")
        wait_action(assign["id"])

    def test_authentication_and_rate_limits(self):
        for headers in [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YWxpY2U6eA=="}]:
            status, response_headers, body = http("GET", "/v2/reserved_ips", token=None, headers=headers)
            self.assert_error(status, body, 401, "unauthorized")
            self.assertEqual(body["message"], "Unable to authenticate you.")
        with self.assertRaises(ClientAuthenticationError):
            pydo("wrong-token").regions.list()
        status, headers, _ = http("GET", "/v2/regions")
        self.assertEqual(status, 200)
        for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "x-request-id"]:
            self.assertIn(name, headers)
        self.assertEqual(headers["Content-Type"], "application/json; charset=utf-8")
        # carol may make 5 requests a minute.
        answers = [http("GET", "/v2/regions", token="carol-token") for _ in range(7)]
        self.assertEqual([a[0] for a in answers[:5]], [200] * 5)
        status, headers, body = answers[6]
        self.assert_error(status, body, 429, "too_many_requests")
        self.assertEqual(body["message"], "API rate limit exceeded.")
        self.assertGreaterEqual(int(headers["retry-after"]), 1)
        self.assertIn("ratelimit-remaining", headers)


class TenantTests(Shapes):
    def test_another_customers_resources_do_not_exist(self):
        droplet = new_droplet(name="tenant")
        address = http("POST", "/v2/reserved_ips", body={"region": "nyc1"})[2]["reserved_ip"]["ip"]
        action = http("POST", f"/v2/reserved_ips/{address}/actions", body={"type": "assign", "droplet_id": droplet})[2]["action"]
        wait_action(action["id"])
        power = http("POST", f"/v2/droplets/{droplet}/actions", body={"type": "reboot"})[2]["action"]
        wait_action(power["id"])
        bob_droplet = new_droplet("bob-token", name="bobs")
        bob_ip = http("POST", "/v2/reserved_ips", token="bob-token", body={"region": "nyc1"})[2]["reserved_ip"]["ip"]
        for method, path, body in [
            ("GET", f"/v2/droplets/{droplet}", None),
            ("DELETE", f"/v2/droplets/{droplet}", None),
            ("GET", f"/v2/droplets/{droplet}/actions", None),
            ("POST", f"/v2/droplets/{droplet}/actions", {"type": "power_off"}),
            ("GET", f"/v2/droplets/{droplet}/actions/{power['id']}", None),
            ("GET", f"/v2/actions/{power['id']}", None),
            ("GET", f"/v2/actions/{action['id']}", None),
            ("GET", f"/v2/reserved_ips/{address}", None),
            ("DELETE", f"/v2/reserved_ips/{address}", None),
            ("GET", f"/v2/reserved_ips/{address}/actions", None),
            ("POST", f"/v2/reserved_ips/{address}/actions", {"type": "unassign"}),
            ("GET", f"/v2/reserved_ips/{address}/actions/{action['id']}", None),
            ("GET", f"/v2/floating_ips/{address}", None),
            # Bob cannot point his IP at alice's droplet, nor alice's IP at his.
            ("POST", f"/v2/reserved_ips/{bob_ip}/actions", {"type": "assign", "droplet_id": droplet}),
            ("POST", "/v2/reserved_ips", {"droplet_id": droplet}),
        ]:
            with self.subTest(method=method, path=path):
                status, _, answer = http(method, path, token="bob-token", body=body)
                self.assert_error(status, answer, 404, "not_found")
        status, _, answer = http("POST", f"/v2/reserved_ips/{address}/actions", body={"type": "assign", "droplet_id": bob_droplet})
        self.assert_error(status, answer, 404, "not_found")
        # Nor do they show in his lists.
        self.assertNotIn(address, [r["ip"] for r in http("GET", "/v2/reserved_ips?per_page=200", token="bob-token")[2]["reserved_ips"]])
        self.assertNotIn(droplet, [d["id"] for d in http("GET", "/v2/droplets?per_page=200", token="bob-token")[2]["droplets"]])
        self.assertFalse({power["id"], action["id"]} & {a["id"] for a in http("GET", "/v2/actions?per_page=200", token="bob-token")[2]["actions"]})
        # And alice's are untouched.
        ip = http("GET", f"/v2/reserved_ips/{address}")[2]["reserved_ip"]
        self.assertEqual(ip["droplet"]["id"], droplet)


class ConcurrencyTests(Shapes):
    def test_twenty_concurrent_assign_and_unassign_on_one_ip(self):
        droplets = [new_droplet(name=f"race-{i}") for i in range(3)]
        address = http("POST", "/v2/reserved_ips", body={"region": "nyc1"})[2]["reserved_ip"]["ip"]
        results = [None] * 20
        start = threading.Barrier(20)

        def request(index):
            start.wait()
            body = {"type": "unassign"} if index % 4 == 3 else {"type": "assign", "droplet_id": droplets[index % 3]}
            results[index] = http("POST", f"/v2/reserved_ips/{address}/actions", body=body)

        threads = [threading.Thread(target=request, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = [body["action"] for status, _, body in results if status == 201]
        refused = [body for status, _, body in results if status == 422]
        self.assertEqual(len(accepted) + len(refused), 20, [r[0] for r in results])
        self.assertGreaterEqual(len(accepted), 1)
        for body in refused:
            self.assertIn(body["id"], ["unprocessable_entity"])
        for action in accepted:
            self.assertIn(wait_action(action["id"])["status"], ["completed", "errored"])
        ip = http("GET", f"/v2/reserved_ips/{address}")[2]["reserved_ip"]
        self.assertFalse(ip["locked"])
        holders = [d for d in droplets if any(r["ip"] == address and r["droplet"] and r["droplet"]["id"] == d
                                            for r in http("GET", "/v2/reserved_ips?per_page=200")[2]["reserved_ips"])]
        self.assertLessEqual(len(holders), 1)
        if ip["droplet"] is not None:
            self.assertIn(ip["droplet"]["id"], droplets)
        # Each droplet's view agrees: at most one of them is the IP's.
        self.assertEqual(holders, [ip["droplet"]["id"]] if ip["droplet"] else [])


class RestartTests(Shapes):
    def test_killing_the_orchestrator_during_assignments_loses_nothing(self):
        droplets = [new_droplet(name=f"crash-{i}") for i in range(8)]
        addresses = [http("POST", "/v2/reserved_ips", body={"region": "nyc1"})[2]["reserved_ip"]["ip"] for _ in range(4)]
        # One orchestrator (SQLite), or the first of its replicas (PostgreSQL: the other serves meanwhile).
        pid_file = os.path.join(DATA, "run", "reserved-ip.pid")
        if not os.path.exists(pid_file):
            pid_file = os.path.join(DATA, "run", "reserved-ip-1.pid")
        with open(pid_file) as handle:
            old_pid = int(handle.read())
        actions = []
        for address, droplet in zip(addresses, droplets[:4]):
            status, _, body = http("POST", f"/v2/reserved_ips/{address}/actions", body={"type": "assign", "droplet_id": droplet})
            self.assertEqual(status, 201, body)
            actions.append(body["action"])
        os.kill(old_pid, signal.SIGKILL)  # mid-flight: the hypervisors take a moment per event
        # Requests while it is down fail cleanly (5xx) or succeed after its restart; they never hang.
        def restarted():
            try:
                with open(pid_file) as handle:
                    pid = int(handle.read())
            except (OSError, ValueError):
                return False
            return pid != old_pid and http("GET", f"/v2/reserved_ips/{addresses[0]}")[0] == 200
        wait_for(restarted, "the orchestrator to be restarted")
        # A reassign of each IP to a droplet of its own, started after the restart, and another kill during it.
        for action in actions:
            self.assertIn(wait_action(action["id"])["status"], ["completed", "errored"])
        moves = []
        for index, address in enumerate(addresses):
            status, _, body = http("POST", f"/v2/reserved_ips/{address}/actions", body={"type": "assign", "droplet_id": droplets[index + 4]})
            self.assertEqual(status, 201, body)
            moves.append(body["action"])
        with open(pid_file) as handle:
            os.kill(int(handle.read()), signal.SIGKILL)
        for action in moves:
            self.assertEqual(wait_action(action["id"])["status"], "completed")
        listed = http("GET", "/v2/reserved_ips?per_page=200")[2]["reserved_ips"]
        holders = {}
        for record in listed:
            if record["ip"] in addresses:
                self.assertFalse(record["locked"])
                holders[record["ip"]] = record["droplet"]["id"]
        self.assertEqual(holders, {address: droplets[index + 4] for index, address in enumerate(addresses)})
        self.assertEqual(len(set(holders.values())), 4)  # no droplet holds two, no IP is on two


class ReplicaKillTests(Shapes):
    """PostgreSQL only: two Harpoon replicas and two orchestrator replicas. Under a load of droplet creations and IP
    assignments, one replica of each is killed -9 at seeded random points (SHOAL_SEED repeats a run)."""

    def test_killing_a_harpoon_and_an_orchestrator_replica_under_load_loses_nothing(self):
        seed = int(os.environ.get("SHOAL_SEED") or random.randrange(1, 1_000_000))
        chance = random.Random(seed)
        creations = 100
        harpoon_victim = f"harpoon-{chance.randint(1, 2)}"
        orchestrator_victim = f"reserved-ip-{chance.randint(1, 2)}"
        kill_harpoon_after = chance.randint(5, 40)
        kill_orchestrator_after = chance.randint(5, 40)
        print(f"replica kill test: seed {seed} (SHOAL_SEED={seed} repeats it): {harpoon_victim} is killed after "
              f"{kill_harpoon_after} answers, {orchestrator_victim} after {kill_orchestrator_after}", flush=True)
        for name in (harpoon_victim, orchestrator_victim):
            self.assertTrue(os.path.exists(os.path.join(DATA, "run", f"{name}.pid")), f"{name} is not running: not a replica cluster")
        holders = [new_droplet(name=f"holder-{i}") for i in range(4)]
        addresses = [http("POST", "/v2/reserved_ips", body={"region": "nyc1"})[2]["reserved_ip"]["ip"] for _ in range(2)]

        lock = threading.Lock()
        answers = []  # (time, what) of every successful answer
        latencies = []  # how long each request waited for its answer
        failures = []  # every request that got no successful answer
        created = {}  # name -> droplet id, as acknowledged
        ip_actions = []  # acknowledged IP actions
        killed = []
        next_index = [0]
        started = time.monotonic()

        def answered(what):
            with lock:
                answers.append((time.monotonic(), what))
                count = len(answers)
                for victim, after in ((harpoon_victim, kill_harpoon_after), (orchestrator_victim, kill_orchestrator_after)):
                    if count >= after and victim not in killed:
                        killed.append(victim)
                        with open(os.path.join(DATA, "run", f"{victim}.pid")) as handle:
                            os.kill(int(handle.read()), signal.SIGKILL)

        def request(method, path, body):
            sent = time.monotonic()
            try:
                return http(method, path, body=body)
            except OSError as error:  # no answer at all (connection reset, timeout)
                return None, None, str(error)
            finally:
                with lock:
                    latencies.append(time.monotonic() - sent)

        def creator():
            while True:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= creations:
                    return
                name = f"load-{index}"
                region = "nyc1" if index % 2 == 0 else "sfo3"
                status, _, body = request("POST", "/v2/droplets", {"name": name, "region": region, "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"})
                if status == 202:
                    with lock:
                        created[name] = body["droplet"]["id"]
                    answered(name)
                else:
                    with lock:
                        failures.append((name, status, body))

        def mover(address, pair):
            # Moves its IP between its two holders (the other IP has two others: an action makes an event on both
            # droplets it touches), one action at a time, until the creations are done.
            turn = 0
            while next_index[0] < creations or turn < 4:
                target = pair[turn % 2]
                turn += 1
                status, _, body = request("POST", f"/v2/reserved_ips/{address}/actions", {"type": "assign", "droplet_id": target})
                if status != 201:
                    with lock:
                        failures.append((address, status, body))
                    continue
                with lock:
                    ip_actions.append(body["action"])
                answered(address)
                wait_action(body["action"]["id"])

        threads = [threading.Thread(target=creator) for _ in range(4)] + [threading.Thread(target=mover, args=(a, holders[2 * i:2 * i + 2])) for i, a in enumerate(addresses)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # While the creations ran: the longest time without any answer, and the longest a request waited for its own.
        times = [started] + sorted(at for at, what in answers if what.startswith("load-"))
        longest = max(later - earlier for earlier, later in zip(times, times[1:]))
        print(f"replica kill test: {len(answers)} answers, {len(failures)} failed requests; while the creations ran the "
              f"longest time without an answer was {longest * 1000:.0f} ms, the slowest request {max(latencies) * 1000:.0f} ms; "
              f"killed {killed}", flush=True)
        self.assertEqual(sorted(killed), sorted([harpoon_victim, orchestrator_victim]))
        # The survivors served throughout: every request was answered (the aggregator retries a call whose replica
        # died on the other, with the same idempotency key).
        self.assertEqual(failures, [])
        self.assertEqual(len(created), creations)

        # Every droplet acknowledged exists once, ends active, and its create action ended once, completed.
        def settled():
            droplets = http("GET", "/v2/droplets?per_page=200")[2]["droplets"]
            loaded = [d for d in droplets if d["name"].startswith("load-")]
            return loaded if len(loaded) >= creations and all(d["status"] == "active" for d in loaded) else None
        loaded = wait_for(settled, "every droplet active", timeout=120)
        self.assertEqual(sorted(d["name"] for d in loaded), sorted(created))
        self.assertEqual({d["name"]: d["id"] for d in loaded}, created)
        for droplet in loaded:
            actions = http("GET", f"/v2/droplets/{droplet['id']}/actions")[2]["actions"]
            self.assertEqual([(a["type"], a["status"]) for a in actions], [("create", "completed")], droplet["name"])

        # Every IP action acknowledged finished once, completed; each IP is on one droplet, no droplet holds two.
        for action in ip_actions:
            self.assertEqual(wait_action(action["id"])["status"], "completed", action)
        self.assertEqual(len({a["id"] for a in ip_actions}), len(ip_actions))
        listed = http("GET", "/v2/reserved_ips?per_page=200")[2]["reserved_ips"]
        on = {r["ip"]: r["droplet"]["id"] for r in listed if r["ip"] in addresses and r["droplet"]}
        self.assertEqual(set(on), set(addresses))
        self.assertEqual(len(set(on.values())), len(addresses))
        for record in listed:
            if record["ip"] in addresses:
                self.assertFalse(record["locked"])


if __name__ == "__main__":
    unittest.main()
