@testable import EventRouter
import EventRouterAPI
@testable import Harpoon
import HarpoonAPI
import HypervisorAgent
import NIOCore
import Synchronization
import Testing
import TestSupport

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
                let router = Router(region: "nyc1", results: results, fleet: fleet, runningReportDelay: .zero, abandonAfter: abandonAfter)
                let server = RPCServer(configuration: .init(host: "127.0.0.1", port: 0), services: [EventRouterService(router: router)])
                let port = try #require(try await server.start().port)
                router.advertise("127.0.0.1:\(port)")
                routers.append(router)
                servers.append(server)
                addresses.append("127.0.0.1:\(port)")
                clients.append(RPCClient(targets: [("127.0.0.1", port)]))
            }
        }

        var delivery: RouterDelivery {
            RouterDelivery(regions: ["nyc1": zip(addresses, clients).map { (address: $0, client: $1) }])
        }

        func stop() async {
            for client in clients { await client.close() }
            for server in servers { await server.shutdownGracefully(timeout: .seconds(2)) }
        }
    }

    func event(_ id: Int64, on hypervisorId: String = "hv1") -> Harpoon_V1_Event {
        Harpoon_V1_Event(
            id: id, type: "create", dropletId: id, region: "nyc1", hypervisorId: hypervisorId, status: .placed, payload: sizeSmall.serializedBytes()
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
        let agentClient = RPCClient(targets: [("127.0.0.1", try #require(routers.servers[1].port))])
        let onB = Task { await agent.run(client: agentClient) }
        #expect(await eventually { routers.routers[1].connectedAgents == 1 })

        // The placement names router A (stale); the agent is on B.
        try await delivery.deliver(event(1), via: routers.addresses[0])
        #expect(await eventually { self.completed(routers.results, 1) })
        #expect(routers.routers[0].pendingEvents == 0, "router A kept an event for an agent that is not its own")
        #expect(delivery.knownRouter(of: "hv1") == 1)
        // B's reports name B, so the scheduler's next placements name the right router.
        #expect(await eventually {
            await routers.routers[1].flush()
            return routers.fleet.routers.withLock { $0["hv1"] } == routers.addresses[1]
        })

        // The agent moves to A (B's stream ends; it reconnects elsewhere).
        onB.cancel()
        await onB.value
        await agentClient.close()
        #expect(await eventually { routers.routers[1].connectedAgents == 0 })
        let agentClientA = RPCClient(targets: [("127.0.0.1", try #require(routers.servers[0].port))])
        let onA = Task { await agent.run(client: agentClientA) }
        #expect(await eventually { routers.routers[0].connectedAgents == 1 })
        // No hint at all: the directory says B, B no longer has the agent, A has.
        try await delivery.deliver(event(2), via: "")
        #expect(await eventually { self.completed(routers.results, 2) })
        #expect(delivery.knownRouter(of: "hv1") == 0)
        #expect(routers.routers[1].pendingEvents == 0, "router B kept an event for an agent that left it")

        onA.cancel()
        await onA.value
        await agentClientA.close()
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

        let keeping = Router(region: "nyc1", results: RecordingResults(), fleet: StampedFleet(), abandonAfter: .seconds(3600))
        _ = try keeping.deliver(event(3))
        await keeping.flush()
        #expect(keeping.pendingEvents == 1, "an event kept for an agent away a short while is dropped")
    }

    @Test("a router stamps its address on the states it reports and on the agents it marks unresponsive")
    func stamps() async throws {
        let routers = try await TwoRouters()
        let agent = HypervisorAgent(AgentConfiguration(hypervisorId: "hv9", region: "nyc1"))
        let client = RPCClient(targets: [("127.0.0.1", try #require(routers.servers[0].port))])
        let running = Task { await agent.run(client: client) }
        #expect(await eventually {
            await routers.routers[0].flush()
            return routers.fleet.routers.withLock { $0["hv9"] } == routers.addresses[0]
        })
        running.cancel()
        await running.value
        await client.close()
        #expect(await eventually { routers.fleet.unresponsive.withLock { $0.contains { $0.ids == ["hv9"] && $0.router == routers.addresses[0] } } })
        await routers.stop()
    }
}
