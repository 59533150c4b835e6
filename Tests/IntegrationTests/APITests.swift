import ChildProcess
import Foundation
import TestSupport
import Testing

/// The customer API end to end: for each group of tests in `Tests/APITests/test_api.py`, a cluster started by
/// `shoal-local` (the launcher `make run` uses) on free ports, driven by the official DigitalOcean client pydo and by
/// plain HTTP from Python. Each group gets a fresh cluster, so none depends on another's leftovers.
@Suite("the customer API through shoal-local, with pydo, on SQLite and on PostgreSQL replicas", .serialized)
struct APITests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let python = root.appendingPathComponent(".build-interop/venv/bin/python").path

    @Test("regions and sizes, with links and meta", arguments: Engine.allCases)
    func catalog(engine: Engine) async throws { try await run("CatalogTests", engine) }

    @Test("droplets: create, list, get, power actions, one at a time, pagination, delete", arguments: Engine.allCases)
    func droplets(engine: Engine) async throws { try await run("DropletTests", engine) }

    @Test(
        "reserved IPs: reserve, reserve to a droplet, assign, reassign, unassign, release; floating_ips; every documented error; auth and rate limits",
        arguments: Engine.allCases)
    func reservedIPs(engine: Engine) async throws { try await run("ReservedIPTests", engine) }

    @Test(
        "tenant isolation: another customer's droplet, IP or action is 404 on every endpoint",
        arguments: Engine.allCases)
    func tenants(engine: Engine) async throws { try await run("TenantTests", engine) }

    @Test(
        "20 concurrent assign and unassign requests on one IP leave it on at most one droplet, every action finished",
        arguments: Engine.allCases)
    func concurrency(engine: Engine) async throws { try await run("ConcurrencyTests", engine) }

    @Test(
        "kill -9 of the orchestrator during assignments loses no action and puts no IP on two droplets",
        arguments: Engine.allCases)
    func orchestratorRestart(engine: Engine) async throws { try await run("RestartTests", engine) }

    @Test(
        "PostgreSQL: kill -9 of a Harpoon replica and an orchestrator replica at seeded points under load loses nothing; the others serve throughout"
    )
    func replicasKilled() async throws { try await run("ReplicaKillTests", .postgres) }

    /// The orchestrator's and the customer API's metrics moved with the work the reserved-IP tests did.
    func scrapeAfterReservedIPs(_ launcherOutput: String) async throws {
        /// The metrics ports of the services named `service` (its replicas: `service-1`, `service-2`, ...).
        func ports(of service: String) -> [Int] {
            guard
                let line = launcherOutput.split(separator: "\n").first(where: {
                    $0.contains("metrics (Prometheus text)")
                })
            else { return [] }
            return line.split(separator: ",").compactMap { entry in
                let parts = entry.split(separator: " ")
                guard parts.count >= 2, let name = parts.dropLast().last,
                    name == service || name.hasPrefix("\(service)-"),
                    let colon = parts.last?.lastIndex(of: ":")
                else { return nil }
                return Int(parts.last?[colon...].dropFirst().prefix { $0.isNumber } ?? "")
            }
        }
        let orchestratorPorts = ports(of: "reserved-ip")
        try #require(!orchestratorPorts.isEmpty, "\(launcherOutput)")
        var texts: [String] = []
        for port in orchestratorPorts { texts.append(try await scrape(port)) }
        let orchestrator = texts.joined(separator: "\n")
        #expect(
            sample(
                orchestrator, "rpc_server_requests_total",
                ["method": "/reservedip.v1.ReservedIPs/Assign", "code": "ok"]) >= 1)
        #expect(
            sample(
                orchestrator, "rpc_client_requests_total", ["method": "/harpoon.v1.Harpoon/CreateEvent", "code": "ok"])
                >= 1)
        #expect(orchestrator.contains("\nreserved_ip_database_connections "), "\(orchestrator.prefix(2000))")
        let api = try await scrape(try #require(ports(of: "aggregator").first))
        #expect(
            sample(
                api, "api_requests_total",
                ["method": "POST", "route": "/v2/reserved_ips/{ip}/actions", "status": "201"]) >= 1,
            "\(api.split(separator: "\n").filter { $0.hasPrefix("api_requests_total") }.prefix(40))")
        #expect(sample(api, "api_requests_total", ["status": "401"]) >= 1, "the auth tests' refusals are counted")
    }

    func run(_ name: String, _ engine: Engine) async throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.python),
            "no Python venv with pydo: run `make interop-deps` (make test does)")
        let data = FileManager.default.temporaryDirectory.appendingPathComponent("shoal-api-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: data) }
        let launcher = ChildProcess(
            path: built("shoal-local"),
            arguments: [
                "--data-dir", data.path, "--api-port", "0", "--agents-per-region", "3", "--event-milliseconds", "100",
                "--token", "alice-token=alice", "--token-limit", "carol-token=1000/5",
                "--requests-per-hour", "1000000", "--burst-per-minute", "100000", "--store", engine.rawValue,
            ], environment: ["SHOAL_API_TOKENS": "bob-token=bob,carol-token=carol,dave-token=dave"])
        try launcher.start()
        defer { launcher.stop() }
        try await launcher.waitFor("cluster ready", timeout: .seconds(90))
        let api = try #require(
            launcher.output.split(separator: "\n").first { $0.hasPrefix("API: ") }.map {
                String($0.dropFirst("API: ".count))
            },
            "the launcher printed no API line"
        )
        let tests = ChildProcess(
            path: Self.python, arguments: ["-m", "unittest", "-v", "Tests.APITests.test_api.\(name)"],
            environment: ["SHOAL_API": api, "SHOAL_DATA": data.path, "PYTHONDONTWRITEBYTECODE": "1"],
            directory: Self.root
        )
        try tests.start()
        let status = await tests.wait(timeout: .seconds(300))
        // What a test reports of its run (seeds, gaps), in the test log.
        for line in tests.output.split(separator: "\n") where line.contains("kill test: ") { print(line) }
        #expect(status == 0, "\(name) failed:\n\(tests.output)\n--- launcher ---\n\(launcher.output)")
        #expect(tests.output.contains("\nOK"), "\(tests.output)")
        if name == "ReservedIPTests" { try await scrapeAfterReservedIPs(launcher.output) }
        // SIGTERM stops the whole cluster: every service the launcher ran is gone once it has exited.
        let run = data.appendingPathComponent("run")
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: run.path)) ?? []).compactMap { file in
            (try? String(contentsOf: run.appendingPathComponent(file), encoding: .utf8)).flatMap {
                Int32($0.trimmingCharacters(in: .whitespacesAndNewlines))
            }
        }
        // PostgreSQL: two replicas each of Harpoon and the orchestrator (and the server itself, which is not a service).
        #expect(
            pids.count == (engine == .sqlite ? 8 : 10),
            "scheduler, Harpoon, two routers, the orchestrator, two fleets, the aggregator: \(pids)")
        launcher.stop()
        #expect(launcher.output.contains("\nstopped"), "\(launcher.output.suffix(500))")
        for pid in pids { #expect(kill(pid, 0) != 0, "service pid \(pid) outlived the launcher") }
    }
}
