import Foundation
import Harpoon
import HarpoonAPI
import PostgresSupport
import ReservedIPAPI
import TestSupport
import Testing

@testable import ReservedIP

let sizeSmall = Scheduler_V2_Size(slug: "s-1vcpu-1gb", vcpus: 1, memoryMb: 1024, diskGb: 25)

/// A real Harpoon (in process, on 127.0.0.1) with no outbox worker: the test plays the event router, completing or
/// failing the orchestrator's events when it chooses, so every in-between state can be looked at.
final class Bench: Sendable {
    let directory: URL
    let harpoonStore: SQLiteHarpoonStore
    let harpoonServer: RPCServer
    let harpoonClient: RPCClient
    let harpoon: Harpoon_V1_Harpoon.Client
    let pools: AddressPools
    /// The orchestrator's database: its SQLite file in `directory`, or a fresh PostgreSQL database.
    let engine: Engine
    let postgres: PostgresAddress?

    init(_ engine: Engine = .sqlite, pools: [String] = ["nyc1=192.0.2.0/29", "sfo3=198.51.100.0/29"]) async throws {
        self.engine = engine
        postgres = engine == .postgres ? try await freshPostgresDatabase() : nil
        directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "reserved-ip-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        harpoonStore = try SQLiteHarpoonStore(path: directory.appendingPathComponent("harpoon.sqlite").path)
        harpoonServer = RPCServer(
            configuration: .init(host: "127.0.0.1", port: 0),
            services: [HarpoonService(store: harpoonStore, worker: nil, changes: ChangeNotifier())]
        )
        _ = try await harpoonServer.start()
        let port = harpoonServer.port ?? 0
        harpoonClient = RPCClient(targets: [("127.0.0.1", port)])
        harpoon = Harpoon_V1_Harpoon.Client(harpoonClient)
        self.pools = try AddressPools(parsing: pools)
    }

    /// An active droplet of `customer` in `region`, on hypervisor `hv-<id>`.
    func droplet(_ customer: String = "alice", region: String = "nyc1") async throws -> Int64 {
        let created = try await harpoon.createDroplet(
            .init(customer: customer, name: "web", region: region, size: sizeSmall, image: "ubuntu"))
        let event = created.event ?? Harpoon_V1_Event()
        _ = try await harpoon.reportEventStatus(
            .init(
                eventId: event.id, status: .completed, ipv4Address: "10.0.0.\(event.dropletId)",
                hypervisorId: "hv-\(event.dropletId)"))
        return event.dropletId
    }

    /// The unfinished orchestrator events (assign_ip, unassign_ip), oldest first.
    func pendingIPEvents() async throws -> [Harpoon_V1_Event] {
        try await harpoon.listEvents(.init(pageSize: 200, types: ["assign_ip", "unassign_ip"])).events.filter {
            $0.status != .completed && $0.status != .errored
        }
    }

    /// Plays the router: waits for the next unfinished IP event and reports it finished.
    @discardableResult
    func finishNext(_ status: Harpoon_V1_Event.Status = .completed, error: String = "") async throws -> Harpoon_V1_Event
    {
        var next: Harpoon_V1_Event?
        _ = await eventually {
            next = try? await self.pendingIPEvents().first
            return next != nil
        }
        let event = try #require(next, "no assign_ip or unassign_ip event arrived")
        _ = try await harpoon.reportEventStatus(
            .init(eventId: event.id, status: status, error: error, hypervisorId: event.hypervisorId))
        return event
    }

    func stop() async {
        await harpoonClient.close()
        await harpoonServer.shutdownGracefully(timeout: .seconds(2))
        try? FileManager.default.removeItem(at: directory)
    }
}

/// The orchestrator over its database (the bench's engine), served on 127.0.0.1; stop and start it again to play a
/// restart, or start two to play replicas.
final class Orchestrator: Sendable {
    let store: any ReservedIPStore
    let postgresStore: PostgresReservedIPStore?
    let driver: TransitionDriver
    let server: RPCServer
    let client: RPCClient
    let api: Reservedip_V1_ReservedIPs.Client
    let watch: Task<Void, Never>

    init(_ bench: Bench, busyPatience: Duration = .seconds(60), claimSeconds: Double = 30) async throws {
        if let address = bench.postgres {
            let opened = try await PostgresReservedIPStore.open(address, pools: bench.pools)
            (store, postgresStore) = (opened, opened)
        } else {
            store = try SQLiteReservedIPStore(
                path: bench.directory.appendingPathComponent("reserved-ip.sqlite").path, pools: bench.pools)
            postgresStore = nil
        }
        driver = TransitionDriver(
            store: store, harpoon: bench.harpoonClient, busyPatience: busyPatience, claimSeconds: claimSeconds)
        server = RPCServer(
            configuration: .init(host: "127.0.0.1", port: 0),
            services: [ReservedIPService(store: store, driver: driver, harpoon: bench.harpoonClient)]
        )
        _ = try await server.start()
        let port = server.port ?? 0
        try await driver.resume()
        let driver = self.driver
        let replicas = postgresStore != nil
        watch = Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await driver.watch() }
                // As the service runs it on PostgreSQL: actions whose driver's claim lapsed are taken over.
                if replicas {
                    group.addTask { await driver.adoptOrphans() }
                    group.addTask { await driver.adoptReleased() }
                }
            }
        }
        client = RPCClient(targets: [("127.0.0.1", port)])
        api = Reservedip_V1_ReservedIPs.Client(client)
    }

    func stop() async {
        watch.cancel()
        driver.halt()
        await client.close()
        await server.shutdownGracefully(timeout: .seconds(2))
        await postgresStore?.close()
    }

    func action(_ id: Int64, customer: String = "alice") async throws -> Reservedip_V1_Action {
        try await api.getAction(.init(customer: customer, id: id))
    }

    func ip(_ address: String, customer: String = "alice") async throws -> Reservedip_V1_ReservedIP {
        try await api.get(.init(customer: customer, ip: address))
    }

    /// Waits until the action is completed or errored; returns it.
    func finished(_ id: Int64) async throws -> Reservedip_V1_Action {
        _ = await eventually { (try? await self.action(id))?.status != .inProgress }
        return try await action(id)
    }
}

func withOrchestrator(
    _ engine: Engine = .sqlite, pools: [String] = ["nyc1=192.0.2.0/29", "sfo3=198.51.100.0/29"],
    _ body: (Bench, Orchestrator) async throws -> Void
) async throws {
    let bench = try await Bench(engine, pools: pools)
    let orchestrator = try await Orchestrator(bench)
    do {
        try await body(bench, orchestrator)
    } catch {
        Issue.record(error)
    }
    await orchestrator.stop()
    await bench.stop()
}

func refusal(_ body: () async throws -> some Any) async -> RPCError? {
    do {
        _ = try await body()
        return nil
    } catch let error as RPCError {
        return error
    } catch {
        return RPCError(code: .unknown, message: "\(error)")
    }
}

@Suite("the reserved-IP orchestrator, on SQLite and on PostgreSQL", .serialized, .postgresServer)
struct OrchestratorTests {
    @Test(
        "reserving to a region takes the lowest free address of its pool, bills it, and runs out cleanly",
        arguments: Engine.allCases)
    func reserveToRegion(engine: Engine) async throws {
        try await withOrchestrator(engine, pools: ["nyc1=192.0.2.0/30"]) { _, orchestrator in
            let first = try #require(
                try await orchestrator.api.reserve(
                    .init(idempotencyKey: "r1", customer: "alice", region: "nyc1", projectId: "p1")
                ).reservedIp)
            #expect(
                first.ip == "192.0.2.1" && first.region == "nyc1" && first.dropletId == 0 && !first.locked
                    && first.projectId == "p1")
            let again = try await orchestrator.api.reserve(
                .init(idempotencyKey: "r1", customer: "alice", region: "nyc1", projectId: "p1"))
            #expect(again.reservedIp?.ip == first.ip)  // the same key: the same IP, not a second one
            let second = try await orchestrator.api.reserve(
                .init(idempotencyKey: "r2", customer: "bob", region: "nyc1"))
            #expect(second.reservedIp?.ip == "192.0.2.2")
            let exhausted = await refusal {
                try await orchestrator.api.reserve(.init(idempotencyKey: "r3", customer: "alice", region: "nyc1"))
            }
            #expect(exhausted?.code == .resourceExhausted)
            let noPool = await refusal { try await orchestrator.api.reserve(.init(customer: "alice", region: "ams3")) }
            #expect(noPool?.code == .invalidArgument)
            let both = await refusal {
                try await orchestrator.api.reserve(.init(customer: "alice", region: "nyc1", dropletId: 5))
            }
            #expect(both?.code == .invalidArgument)
            let neither = await refusal { try await orchestrator.api.reserve(.init(customer: "alice")) }
            #expect(neither?.code == .invalidArgument)
            #expect(try await orchestrator.store.billing(customer: "alice").map(\.kind) == ["reserve"])
            // Another customer's IP does not exist for alice.
            #expect(await refusal { try await orchestrator.ip("192.0.2.2") }?.code == .notFound)
        }
    }

    @Test(
        "assign: locked while in flight, refusing other actions on the IP and the droplet; completed when Harpoon reports it",
        arguments: Engine.allCases)
    func assign(engine: Engine) async throws {
        try await withOrchestrator(engine) { bench, orchestrator in
            let droplet = try await bench.droplet()
            let other = try await bench.droplet()
            let ip = try #require(
                try await orchestrator.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp
            ).ip
            let second = try #require(
                try await orchestrator.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp
            ).ip
            let action = try await orchestrator.api.assign(
                .init(idempotencyKey: "a1", customer: "alice", ip: ip, dropletId: droplet))
            #expect(action.type == "assign_ip" && action.status == .inProgress && action.dropletId == droplet)
            #expect(try await orchestrator.ip(ip).locked)
            #expect(try await orchestrator.ip(ip).dropletId == 0)  // not before the action completes
            let during = try await orchestrator.api.stats(.init())
            #expect(during.actionsInProgress == 1)
            // SQLite: one writer and two readers, plus a point-read connection per event loop that has served one.
            // PostgreSQL: as the server counts them, within the pool's limit (4) and the listener's connection.
            let connections = engine == .sqlite ? 3...3 + ProcessInfo.processInfo.activeProcessorCount : 1...5
            #expect(connections.contains(Int(during.databaseConnections)), "\(during.databaseConnections) connections")
            // One action at a time, on the IP and on the droplet.
            let busyIP = await refusal {
                try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: other))
            }
            #expect(
                busyIP?.code == .failedPrecondition && busyIP?.message == "The reserved IP already has a pending event."
            )
            let busyDroplet = await refusal {
                try await orchestrator.api.assign(.init(customer: "alice", ip: second, dropletId: droplet))
            }
            #expect(
                busyDroplet?.code == .failedPrecondition
                    && busyDroplet?.message == "Droplet already has a pending event.")
            // The same request again (a retry) is the same action, with one event.
            #expect(
                try await orchestrator.api.assign(
                    .init(idempotencyKey: "a1", customer: "alice", ip: ip, dropletId: droplet)
                ).id == action.id)
            let event = try await bench.finishNext()
            #expect(
                event.type == "assign_ip" && event.dropletId == droplet && event.hypervisorId == "hv-\(droplet)"
                    && event.payload == Array(ip.utf8))
            let done = try await orchestrator.finished(action.id)
            #expect(done.status == .completed && done.completedAt != nil)
            let assigned = try await orchestrator.ip(ip)
            #expect(assigned.dropletId == droplet && !assigned.locked)
            #expect(try await bench.pendingIPEvents().isEmpty)
            #expect(
                try await orchestrator.store.billing(customer: "alice").map(\.kind) == ["reserve", "reserve", "assign"])
            #expect(try await orchestrator.api.stats(.init()).actionsInProgress == 0)
            // A droplet holds one reserved IP.
            let twice = await refusal {
                try await orchestrator.api.assign(.init(customer: "alice", ip: second, dropletId: droplet))
            }
            #expect(
                twice?.code == .failedPrecondition && twice?.message.contains("already has reserved IP \(ip)") == true)
        }
    }

    @Test(
        "reassign leaves the old droplet's hypervisor first, then joins the new one; unassign leaves",
        arguments: Engine.allCases)
    func reassignAndUnassign(engine: Engine) async throws {
        try await withOrchestrator(engine) { bench, orchestrator in
            let first = try await bench.droplet()
            let second = try await bench.droplet()
            let ip = try #require(
                try await orchestrator.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp
            ).ip
            let assign = try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: first))
            try await bench.finishNext()
            #expect(try await orchestrator.finished(assign.id).status == .completed)
            let reassign = try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: second))
            let leave = try await bench.finishNext()
            #expect(leave.type == "unassign_ip" && leave.dropletId == first && leave.hypervisorId == "hv-\(first)")
            let join = try await bench.finishNext()
            #expect(join.type == "assign_ip" && join.dropletId == second)
            #expect(try await orchestrator.finished(reassign.id).status == .completed)
            #expect(try await orchestrator.ip(ip).dropletId == second)
            let unassign = try await orchestrator.api.unassign(.init(customer: "alice", ip: ip))
            #expect(unassign.type == "unassign_ip" && unassign.dropletId == second)
            let gone = try await bench.finishNext()
            #expect(gone.type == "unassign_ip" && gone.dropletId == second)
            #expect(try await orchestrator.finished(unassign.id).status == .completed)
            let after = try await orchestrator.ip(ip)
            #expect(after.dropletId == 0 && !after.locked && after.region == "nyc1")
            let notAssigned = await refusal { try await orchestrator.api.unassign(.init(customer: "alice", ip: ip)) }
            #expect(notAssigned?.code == .failedPrecondition)
            #expect(
                try await orchestrator.store.billing(customer: "alice").map(\.kind) == [
                    "reserve", "assign", "assign", "unassign",
                ])
            let actions = try await orchestrator.api.listActions(.init(customer: "alice", ip: ip))
            #expect(actions.actions.map(\.type) == ["assign_ip", "assign_ip", "unassign_ip"] && actions.total == 3)
        }
    }

    @Test(
        "refusals: another customer's droplet or IP, another region, a droplet not active, a malformed address",
        arguments: Engine.allCases)
    func refusals(engine: Engine) async throws {
        try await withOrchestrator(engine) { bench, orchestrator in
            let mine = try await bench.droplet()
            let theirs = try await bench.droplet("bob")
            let elsewhere = try await bench.droplet(region: "sfo3")
            let building = try #require(
                try await bench.harpoon.createDroplet(
                    .init(customer: "alice", name: "new", region: "nyc1", size: sizeSmall, image: "ubuntu")
                ).droplet
            ).id
            let ip = try #require(
                try await orchestrator.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp
            ).ip
            let bobsIP = try #require(
                try await orchestrator.api.reserve(.init(customer: "bob", region: "nyc1")).reservedIp
            ).ip
            #expect(
                await refusal {
                    try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: theirs))
                }?.code == .notFound)
            #expect(
                await refusal {
                    try await orchestrator.api.assign(.init(customer: "alice", ip: bobsIP, dropletId: mine))
                }?.code == .notFound)
            #expect(
                await refusal { try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: 999)) }?
                    .code == .notFound)
            let region = await refusal {
                try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: elsewhere))
            }
            #expect(region?.code == .failedPrecondition && region?.message.contains("is in sfo3") == true)
            let inactive = await refusal {
                try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: building))
            }
            #expect(inactive?.code == .failedPrecondition && inactive?.message.contains("not active") == true)
            #expect(
                await refusal {
                    try await orchestrator.api.assign(.init(customer: "alice", ip: "192.0.2.999", dropletId: mine))
                }?.code == .invalidArgument)
            #expect(
                await refusal { try await orchestrator.api.release(.init(customer: "alice", ip: bobsIP)) }?.code
                    == .notFound)
            #expect(
                await refusal { try await orchestrator.api.unassign(.init(customer: "alice", ip: bobsIP)) }?.code
                    == .notFound)
            // None of that left a trace: no action, no lock, no event.
            #expect(try await orchestrator.api.listActions(.init(customer: "alice")).total == 0)
            let unlocked = try await orchestrator.ip(ip)
            #expect(!unlocked.locked)
            #expect(try await bench.pendingIPEvents().isEmpty)
        }
    }

    @Test(
        "a droplet busy with another event refuses the assign at once, leaving nothing behind",
        arguments: Engine.allCases)
    func busyDroplet(engine: Engine) async throws {
        try await withOrchestrator(engine) { bench, orchestrator in
            let droplet = try await bench.droplet()
            _ = try await bench.harpoon.createEvent(
                .init(type: "power_off", dropletId: droplet, customer: "alice", exclusive: true))
            let ip = try #require(
                try await orchestrator.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp
            ).ip
            let refused = await refusal {
                try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: droplet))
            }
            #expect(refused?.code == .failedPrecondition && refused?.message == "Droplet already has a pending event.")
            #expect(try await orchestrator.api.listActions(.init(customer: "alice")).total == 0)
            let unlocked = try await orchestrator.ip(ip)
            #expect(!unlocked.locked)
            // Reserving to that droplet is refused the same way, and the address is not kept.
            let reserve = await refusal {
                try await orchestrator.api.reserve(.init(customer: "alice", dropletId: droplet))
            }
            #expect(reserve?.code == .failedPrecondition)
            #expect(try await orchestrator.api.list(.init(customer: "alice")).reservedIps.map(\.ip) == [ip])
        }
    }

    @Test(
        "a failed event errors the action with Harpoon's reason and unlocks the IP where it was",
        arguments: Engine.allCases)
    func erroredStep(engine: Engine) async throws {
        try await withOrchestrator(engine) { bench, orchestrator in
            let droplet = try await bench.droplet()
            let ip = try #require(
                try await orchestrator.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp
            ).ip
            let action = try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: droplet))
            try await bench.finishNext(.errored, error: "hypervisor said no")
            let done = try await orchestrator.finished(action.id)
            #expect(done.status == .errored && done.error == "hypervisor said no")
            let after = try await orchestrator.ip(ip)
            #expect(after.dropletId == 0 && !after.locked)
            // nothing billed for it
            #expect(try await orchestrator.store.billing(customer: "alice").map(\.kind) == ["reserve"])
        }
    }

    @Test(
        "reserving to a droplet assigns it by an action; releasing an assigned IP removes it at once and frees the address after it leaves",
        arguments: Engine.allCases)
    func reserveToDropletAndRelease(engine: Engine) async throws {
        try await withOrchestrator(engine, pools: ["nyc1=192.0.2.0/30"]) { bench, orchestrator in
            let droplet = try await bench.droplet()
            let reserved = try await orchestrator.api.reserve(
                .init(idempotencyKey: "k", customer: "alice", projectId: "p", dropletId: droplet))
            let ip = try #require(reserved.reservedIp)
            let action = try #require(reserved.action)
            #expect(
                ip.locked && ip.dropletId == 0 && ip.region == "nyc1" && action.type == "assign_ip"
                    && action.dropletId == droplet)
            try await bench.finishNext()
            #expect(try await orchestrator.finished(action.id).status == .completed)
            #expect(try await orchestrator.ip(ip.ip).dropletId == droplet)
            // the pool's other address
            _ = try await orchestrator.api.reserve(.init(customer: "alice", region: "nyc1"))
            _ = try await orchestrator.api.release(.init(idempotencyKey: "rel", customer: "alice", ip: ip.ip))
            // gone from the account at once
            #expect(await refusal { try await orchestrator.ip(ip.ip) }?.code == .notFound)
            // a retry is fine
            _ = try await orchestrator.api.release(.init(idempotencyKey: "rel", customer: "alice", ip: ip.ip))
            // Its address is not handed out while the hypervisor may still hold it...
            #expect(
                await refusal { try await orchestrator.api.reserve(.init(customer: "bob", region: "nyc1")) }?.code
                    == .resourceExhausted)
            let leave = try await bench.finishNext()
            #expect(leave.type == "unassign_ip" && leave.dropletId == droplet)
            // ... and is once it has left.
            var again: Reservedip_V1_ReservedIP?
            _ = await eventually {
                again = try? await orchestrator.api.reserve(
                    .init(idempotencyKey: "bob-1", customer: "bob", region: "nyc1")
                ).reservedIp
                return again != nil
            }
            #expect(again?.ip == ip.ip)
            #expect(
                try await orchestrator.store.billing(customer: "alice").map(\.kind) == [
                    "reserve", "assign", "reserve", "release", "unassign",
                ])
        }
    }

    @Test(
        "after a restart, actions in flight are driven to their end, including an event that finished while it was down",
        arguments: Engine.allCases)
    func restart(engine: Engine) async throws {
        let bench = try await Bench(engine)
        do {
            // (On PostgreSQL the first one's claims on its actions lapse after a second, as after a crash.)
            let first = try await Orchestrator(bench, claimSeconds: 1)
            let droplet = try await bench.droplet()
            let other = try await bench.droplet()
            let ip = try #require(try await first.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp).ip
            let ip2 = try #require(try await first.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp).ip
            let assign = try await first.api.assign(.init(customer: "alice", ip: ip, dropletId: droplet))
            let assign2 = try await first.api.assign(.init(customer: "alice", ip: ip2, dropletId: other))
            await first.stop()
            // Both events finish while the orchestrator is down.
            try await bench.finishNext()
            try await bench.finishNext()
            let second = try await Orchestrator(bench, claimSeconds: 1)
            #expect(try await second.finished(assign.id).status == .completed)
            #expect(try await second.finished(assign2.id).status == .completed)
            let afterFirst = try await second.ip(ip)
            let afterSecond = try await second.ip(ip2)
            #expect(afterFirst.dropletId == droplet && afterSecond.dropletId == other)
            // The next action after the restart goes as usual (the watch resumed).
            let unassign = try await second.api.unassign(.init(customer: "alice", ip: ip))
            try await bench.finishNext()
            #expect(try await second.finished(unassign.id).status == .completed)
            // no step ran twice
            #expect(try await bench.harpoon.listEvents(.init(types: ["assign_ip", "unassign_ip"])).total == 3)
            await second.stop()
        } catch {
            Issue.record(error)
        }
        await bench.stop()
    }

    @Test("a destroyed droplet drops its reserved IP", arguments: Engine.allCases)
    func destroyedDroplet(engine: Engine) async throws {
        try await withOrchestrator(engine) { bench, orchestrator in
            let droplet = try await bench.droplet()
            let ip = try #require(
                try await orchestrator.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp
            ).ip
            let assign = try await orchestrator.api.assign(.init(customer: "alice", ip: ip, dropletId: droplet))
            try await bench.finishNext()
            #expect(try await orchestrator.finished(assign.id).status == .completed)
            let destroy = try await bench.harpoon.deleteDroplet(.init(id: droplet, customer: "alice"))
            _ = try await bench.harpoon.reportEventStatus(.init(eventId: destroy.id, status: .completed))
            #expect(await eventually { (try? await orchestrator.ip(ip))?.dropletId == 0 })
        }
    }
}
