import EventRouterAPI
import HarpoonAPI
import HypervisorAgent
import NIOCore
import Synchronization
import TestSupport
import Testing

@testable import EventRouter

/// The statuses a router reported, in order.
final class RecordingResults: ResultSink {
    let reports = Mutex<[(Int64, Harpoon_V1_Event.Status)]>([])
    /// The latest error reported for each event.
    let errors = Mutex<[Int64: String]>([:])
    /// Events reported refused.
    let refused = Mutex<Set<Int64>>([])
    func report(_ progress: Eventrouter_V1_EventProgress, hypervisorId: String) async throws {
        if !progress.error.isEmpty { errors.withLock { $0[progress.eventId] = progress.error } }
        if progress.refused { _ = refused.withLock { $0.insert(progress.eventId) } }
        reports.withLock { $0.append((progress.eventId, progress.status)) }
    }
}

final class IgnoredFleet: FleetSink {
    func report(_ states: [Scheduler_V2_HypervisorState], region: String, complete: Bool) async throws -> Bool { false }
    func markUnresponsive(_ hypervisorIds: [String], router: String) async throws {}
}

@Suite("the event router's reports")
struct RouterReportTests {
    @Test("a quick event is reported once, finished; a slow one running, then finished")
    func runningHeldBack() async {
        let results = RecordingResults()
        let router = Router(
            region: "nyc1", results: results, fleet: IgnoredFleet(), runningReportDelay: .milliseconds(300))
        // Quick: the outcome follows the running report at once.
        let held = Task { await router.progress(.init(eventId: 1, status: .running), from: "hv1") }
        await router.progress(.init(eventId: 1, status: .completed), from: "hv1")
        await held.value
        #expect(results.reports.withLock { $0.map(\.0) } == [1])
        #expect(results.reports.withLock { $0.map(\.1) } == [.completed])
        // Slow: the running report goes out after the delay, the outcome after it.
        await router.progress(.init(eventId: 2, status: .running), from: "hv1")
        await router.progress(.init(eventId: 2, status: .errored, error: "disk on fire"), from: "hv1")
        #expect(results.reports.withLock { $0.filter { $0.0 == 2 }.map(\.1) } == [.running, .errored])
    }
}

@Suite("what an agent tells its router")
struct AgentMessagesTests {
    /// One router on 127.0.0.1 that reports every status at once, and one agent connected to it.
    func withAgent(duration: Duration, _ body: (Router, RecordingResults, RPCClient) async throws -> Void) async throws
    {
        let results = RecordingResults()
        let router = Router(region: "nyc1", results: results, fleet: IgnoredFleet(), runningReportDelay: .zero)
        let server = RPCServer(
            configuration: .init(host: "127.0.0.1", port: 0), services: [EventRouterService(router: router)])
        let port = try #require(try await server.start().port)
        let client = RPCClient(targets: [("127.0.0.1", port)])
        var configuration = AgentConfiguration(hypervisorId: "hv1", region: "nyc1")
        configuration.eventDuration = duration
        let agent = HypervisorAgent(configuration)
        let running = Task { await agent.run(client: client) }
        do {
            #expect(await eventually { router.connectedAgents == 1 })
            try await body(router, results, client)
        } catch {
            Issue.record(error)
        }
        running.cancel()
        await client.close()
        await server.shutdownGracefully(timeout: .seconds(2))
    }

    func event(_ id: Int64) -> Harpoon_V1_Event {
        Harpoon_V1_Event(
            id: id, type: "create", dropletId: id, region: "nyc1", hypervisorId: "hv1", status: .delivered,
            payload: sizeSmall.serializedBytes())
    }

    @Test("an instant event is answered with its outcome alone; a slow one is reported running first")
    func instantAndSlow() async throws {
        try await withAgent(duration: .zero) { router, results, _ in
            for id: Int64 in 1...20 { _ = try router.deliver(event(id)) }
            #expect(await eventually { results.reports.withLock { $0.count } >= 20 })
            #expect(results.reports.withLock { $0.map(\.1) } == Array(repeating: .completed, count: 20))
            #expect(await eventually { router.pendingEvents == 0 })
        }
        try await withAgent(duration: .milliseconds(30)) { router, results, _ in
            _ = try router.deliver(event(7))
            #expect(await eventually { results.reports.withLock { $0.count } >= 2 })
            #expect(results.reports.withLock { $0.map(\.1) } == [.running, .completed])
        }
    }

    @Test("DeliverBatch answers for each event on its own: kept and sent, another region's, no hypervisor")
    func deliverBatch() async throws {
        try await withAgent(duration: .zero) { router, results, client in
            var otherRegion = event(2)
            otherRegion.region = "sfo3"
            var nowhere = event(3)
            nowhere.hypervisorId = ""
            let response = try await Eventrouter_V1_EventRouter.Client(client).deliverBatch(
                .init(events: [event(1), otherRegion, nowhere]))
            #expect(response.outcomes.map(\.errorCode) == [0, 9, 3])
            #expect(response.outcomes.map(\.agentConnected) == [true, false, false])
            #expect(response.outcomes[1].errorMessage.contains("sfo3"))
            #expect(await eventually { results.reports.withLock { $0.map(\.0) } == [1] })
        }
    }
}
