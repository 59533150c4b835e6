import EventRouterAPI
import HarpoonAPI
import HypervisorAgent
import NIOCore
import Synchronization
import TestSupport
import Testing

@testable import EventRouter
@testable import Harpoon

/// The states a router reported, recorded with the router each names.
final class StampedFleet: FleetSink {
    let routers = Mutex<[String: String]>([:])
    let unresponsive = Mutex<[(ids: [String], router: String)]>([])

    func report(_ states: [Scheduler_V2_HypervisorState], region: String, complete: Bool) async throws -> Bool {
        routers.withLock { routers in
            for state in states { routers[state.id] = state.router }
        }
        return false
    }

    func markUnresponsive(_ hypervisorIds: [String], router: String) async throws {
        unresponsive.withLock { $0.append((hypervisorIds, router)) }
    }
}

@Suite("a region with several routers")
struct RouterDirectoryTests {
    /// Two routers of nyc1 served on 127.0.0.1, each advertising its real address.
    final class TwoRouters {
        let results = RecordingResults()
        let fleet = StampedFleet()
        var routers: [Router] = []
        var servers: [RPCServer] = []
        var addresses: [String] = []
        var clients: [RPCClient] = []

        init(abandonAfter: Duration = .seconds(60)) async throws {
            for _ in 0..<2 {
                let router = Router(
                    region: "nyc1", results: results, fleet: fleet, runningReportDelay: .zero,
                    abandonAfter: abandonAfter)
                let server = RPCServer(
                    configuration: .init(host: "127.0.0.1", port: 0), services: [EventRouterService(router: router)])
                let port = try #require(try await server.start().port)
                router.advertise("127.0.0.1:\(port)")
                routers.append(router)
                servers.append(server)
                addresses.append("127.0.0.1:\(port)")
                clients.append(RPCClient(targets: [("127.0.0.1", port)]))
            }
        }

        var delivery: RouterDelivery {
            // A generous timeout: a router that is slow to answer on a loaded machine is not down; these tests count
            // where events are kept, and a call given up on would keep one twice.
            RouterDelivery(
                regions: ["nyc1": zip(addresses, clients).map { (address: $0, client: $1) }], timeout: .seconds(60))
        }

        /// An agent running on router `index` until ``ConnectedAgent/disconnect()``.
        func connect(_ agent: HypervisorAgent, to index: Int) throws -> ConnectedAgent {
            let client = RPCClient(targets: [("127.0.0.1", try #require(servers[index].port))])
            return ConnectedAgent(task: Task { await agent.run(client: client) }, client: client)
        }

        /// Flushes router `index` and says whether the scheduler's view names it for `hypervisorId`.
        func reported(_ hypervisorId: String, by index: Int) async -> Bool {
            await routers[index].flush()
            return fleet.routers.withLock { $0[hypervisorId] } == addresses[index]
        }

        func stop() async {
            for client in clients { await client.close() }
            for server in servers { await server.shutdownGracefully(timeout: .seconds(2)) }
        }
    }

    struct ConnectedAgent {
        let task: Task<Void, Never>
        let client: RPCClient

        /// Ends the agent's stream (its router sees it leave) and closes its connection.
        func disconnect() async {
            task.cancel()
            await task.value
            await client.close()
        }
    }

    func event(_ id: Int64, on hypervisorId: String = "hv1") -> Harpoon_V1_Event {
        Harpoon_V1_Event(
            id: id, type: "create", dropletId: id, region: "nyc1", hypervisorId: hypervisorId, status: .placed,
            payload: sizeSmall.serializedBytes()
        )
    }

    func completed(_ results: RecordingResults, _ id: Int64) -> Bool {
        results.reports.withLock { $0.contains { $0.0 == id && $0.1 == .completed } }
    }

    @Test("an event named for the wrong router reaches the agent where it is; an agent that moves is found again")
    func findsTheAgent() async throws {
        let routers = try await TwoRouters()
        let delivery = routers.delivery
        let agent = HypervisorAgent(AgentConfiguration(hypervisorId: "hv1", region: "nyc1"))
        let onB = try routers.connect(agent, to: 1)
        #expect(await eventually { routers.routers[1].connectedAgents == 1 })

        // The placement names router A (stale); the agent is on B.
        try await delivery.deliver(event(1), via: routers.addresses[0])
        #expect(await eventually { self.completed(routers.results, 1) })
        #expect(routers.routers[0].pendingEvents == 0, "router A kept an event for an agent that is not its own")
        #expect(delivery.knownRouter(of: "hv1") == 1)
        // B's reports name B, so the scheduler's next placements name the right router.
        #expect(await eventually { await routers.reported("hv1", by: 1) })

        // The agent moves to A (B's stream ends; it reconnects elsewhere).
        await onB.disconnect()
        #expect(await eventually { routers.routers[1].connectedAgents == 0 })
        let onA = try routers.connect(agent, to: 0)
        #expect(await eventually { routers.routers[0].connectedAgents == 1 })
        // No hint at all: the directory says B, B no longer has the agent, A has.
        try await delivery.deliver(event(2), via: "")
        #expect(await eventually { self.completed(routers.results, 2) })
        #expect(delivery.knownRouter(of: "hv1") == 0)
        #expect(routers.routers[1].pendingEvents == 0, "router B kept an event for an agent that left it")

        await onA.disconnect()
        await routers.stop()
    }

    @Test("an event for an agent no router has is kept at one router only, the same one every time")
    func keptOnce() async throws {
        let routers = try await TwoRouters()
        let delivery = routers.delivery
        try await delivery.deliver(event(7, on: "hv-away"), via: "")
        #expect(routers.routers.map(\.pendingEvents).reduce(0, +) == 1)
        let keeper = RouterDelivery.stableIndex("hv-away", count: 2)
        #expect(routers.routers[keeper].pendingEvents == 1)
        // Delivered again (the outbox's redelivery): still kept once, at the same router.
        try await delivery.deliver(event(7, on: "hv-away"), via: "")
        #expect(routers.routers[keeper].pendingEvents == 1)
        #expect(routers.routers[1 - keeper].pendingEvents == 0)
        #expect(delivery.knownRouter(of: "hv-away") == nil)
        await routers.stop()
    }

    @Test("a router delivers only if connected when asked, and lets go of events kept for an agent long away")
    func onlyIfConnectedAndAbandon() async throws {
        let router = Router(region: "nyc1", results: RecordingResults(), fleet: StampedFleet(), abandonAfter: .zero)
        #expect(try router.deliver(event(1), onlyIfConnected: true) == false)
        #expect(router.pendingEvents == 0)
        #expect(try router.deliver(event(2)) == false)
        #expect(router.pendingEvents == 1)
        await router.flush()
        #expect(router.pendingEvents == 0, "an event kept for an agent away longer than abandonAfter stays")

        let keeping = Router(
            region: "nyc1", results: RecordingResults(), fleet: StampedFleet(), abandonAfter: .seconds(3600))
        _ = try keeping.deliver(event(3))
        await keeping.flush()
        #expect(keeping.pendingEvents == 1, "an event kept for an agent away a short while is dropped")
    }

    @Test("a router stamps its address on the states it reports and on the agents it marks unresponsive")
    func stamps() async throws {
        let routers = try await TwoRouters()
        let agent = HypervisorAgent(AgentConfiguration(hypervisorId: "hv9", region: "nyc1"))
        let running = try routers.connect(agent, to: 0)
        #expect(await eventually { await routers.reported("hv9", by: 0) })
        await running.disconnect()
        #expect(
            await eventually {
                routers.fleet.unresponsive.withLock {
                    $0.contains { $0.ids == ["hv9"] && $0.router == routers.addresses[0] }
                }
            })
        await routers.stop()
    }
}

@Suite("heartbeats that carry only what changed, and push latency")
struct HeartbeatDeltaTests {
    @Test("push latency buckets: each latency falls in the bucket whose bounds hold it")
    func buckets() {
        #expect(PushLatency.bucket(micros: 0) == 0)
        #expect(PushLatency.bucket(micros: 1) == 0)
        #expect(PushLatency.bucket(micros: 2) == 4)
        #expect(PushLatency.bucket(micros: 1_000) == 39)  // 2^(39/4) ≈ 861, 2^(40/4) = 1024
        #expect(PushLatency.bucket(micros: .max) == PushLatency.bucketCount - 1)
        var random = SeededRandom(seed: 7)
        for _ in 0..<10_000 {
            let micros = 2 + random.next() % 50_000_000
            let bucket = PushLatency.bucket(micros: micros)
            #expect(
                PushLatency.lowerBound(bucket) <= Double(micros) && Double(micros) < PushLatency.lowerBound(bucket + 1),
                "\(micros) in \(bucket)")
        }
        var latency = PushLatency()
        for micros: UInt64 in [5, 900, 1_100, 1_100] { latency.record(micros: micros) }
        #expect(latency.total == 4)
        #expect(latency.counts[PushLatency.bucket(micros: 1_100)] == 2)
    }

    @Test(
        "a heartbeat without a state keeps the agent alive and reports nothing new, unless it comes back from silence")
    func statelessHeartbeat() async {
        let fleet = RecordingFleet()
        let router = Router(region: "nyc1", results: RecordingResults(), fleet: fleet, heartbeatTimeout: .seconds(3600))
        let (_, stream) = AsyncStream.makeStream(of: Eventrouter_V1_RouterMessage.self)
        _ = router.attach(
            Eventrouter_V1_AgentHello(hypervisorId: "hv1", region: "nyc1", state: .init(id: "hv1", cpus: 8)),
            outgoing: stream)
        router.heartbeat(Scheduler_V2_HypervisorState(id: "hv1", cpus: 8, memoryMb: 8192), from: "hv1")
        await router.flush()
        #expect(fleet.last?.ids == ["hv1"])
        let reports = fleet.reports.withLock { $0.count }
        router.heartbeat(nil, from: "hv1")
        await router.flush()
        #expect(fleet.reports.withLock { $0.count } == reports, "an unchanged heartbeat was reported to the scheduler")

        // Silent past the timeout, then alive again: reported again, as responsive.
        let silent = Router(region: "nyc1", results: RecordingResults(), fleet: fleet, heartbeatTimeout: .zero)
        let (_, outgoing) = AsyncStream.makeStream(of: Eventrouter_V1_RouterMessage.self)
        _ = silent.attach(
            Eventrouter_V1_AgentHello(hypervisorId: "hv2", region: "nyc1", state: .init(id: "hv2", cpus: 8)),
            outgoing: outgoing)
        await silent.flush()
        #expect(silent.isUnresponsive("hv2"))
        #expect(silent.silentAgents == 1)
        let before = fleet.reports.withLock { $0.count }
        silent.heartbeat(nil, from: "hv2")
        #expect(!silent.isUnresponsive("hv2"))
        #expect(silent.silentAgents == 0)
        await silent.flush()
        #expect(fleet.reports.withLock { $0.count } > before)
        #expect(fleet.last?.ids == ["hv2"])
    }

    @Test("an agent's push latency reaches its router's histogram; its idle heartbeats carry no state")
    func pushLatencyFromAgent() async throws {
        let results = RecordingResults()
        let fleet = StampedFleet()
        let router = Router(region: "nyc1", results: results, fleet: fleet, runningReportDelay: .zero)
        let server = RPCServer(
            configuration: .init(host: "127.0.0.1", port: 0), services: [EventRouterService(router: router)])
        let port = try #require(try await server.start().port)
        let client = RPCClient(targets: [("127.0.0.1", port)])
        var configuration = AgentConfiguration(hypervisorId: "hv1", region: "nyc1")
        configuration.eventDuration = .zero
        configuration.heartbeatInterval = .seconds(1)
        // Its heartbeats wait on a ticker the test ticks by hand: each beat comes when the test says, none by real time.
        let ticker = Ticker()
        let agent = HypervisorAgent(configuration, ticker: ticker)
        let running = Task { await agent.run(client: client) }
        #expect(await eventually { router.connectedAgents == 1 })
        for id: Int64 in 1...10 {
            _ = try router.deliver(
                Harpoon_V1_Event(
                    id: id, type: "create", dropletId: id, region: "nyc1", hypervisorId: "hv1", status: .delivered,
                    payload: sizeSmall.serializedBytes()
                ))
        }
        #expect(await eventually { router.pushLatency.total == 10 })
        // Idle: heartbeats go on; none carries a state, once the agent's last change has gone up.
        func beat() async -> Bool {
            // The agent waits for its next beat; tick past it; the beat reaches the router.
            guard await eventually({ ticker.waiting == 1 }) else { return false }
            let before = router.heartbeatsReceived
            ticker.tick(now: .now.advanced(by: .seconds(3600)))
            return await eventually { router.heartbeatsReceived > before }
        }
        for _ in 0..<2 { #expect(await beat()) }  // the first may carry the state the events changed
        let states = router.statesReceived
        for _ in 0..<20 { #expect(await beat()) }
        #expect(agent.heartbeatsSent >= 22)
        #expect(router.statesReceived == states, "\(router.statesReceived - states) states in 20 idle heartbeats")
        running.cancel()
        await running.value
        await client.close()
        await server.shutdownGracefully(timeout: .seconds(2))
    }
}
