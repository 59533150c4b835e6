import EventRouterAPI
import HarpoonAPI
import HypervisorAgent
import NIOCore
import Synchronization
import TestSupport
import Testing

@testable import EventRouter

/// The router's reports to the scheduler, recorded; answers "send a complete report" while `wantsComplete`, and
/// fails while `failing`.
final class RecordingFleet: FleetSink {
    struct Report {
        var ids: [String]
        var complete: Bool
        var region: String
    }

    let reports = Mutex<[Report]>([])
    let wantsComplete = Mutex(false)
    let failing = Mutex(false)

    struct Down: Error {}

    func report(_ states: [Scheduler_V2_HypervisorState], region: String, complete: Bool) async throws -> Bool {
        if failing.withLock({ $0 }) { throw Down() }
        reports.withLock { $0.append(Report(ids: states.map(\.id).sorted(), complete: complete, region: region)) }
        return wantsComplete.withLock { $0 }
    }

    func markUnresponsive(_ hypervisorIds: [String], router: String) async throws {}

    var last: Report? { reports.withLock { $0.last } }
}

/// A router served on 127.0.0.1 with one agent connected to it.
final class OneAgent {
    let router: Router
    let results = RecordingResults()
    let fleet = RecordingFleet()
    let server: RPCServer
    let client: RPCClient
    let agent: HypervisorAgent
    let run: Task<Void, Never>

    /// `ticker`: the agent's timers (heartbeats, running events), ticked by the test; `nil`, real time.
    init(ticker: Ticker? = nil, _ configure: (inout AgentConfiguration) -> Void) async throws {
        router = Router(region: "nyc1", results: results, fleet: fleet, runningReportDelay: .zero)
        server = RPCServer(
            configuration: .init(host: "127.0.0.1", port: 0), services: [EventRouterService(router: router)])
        let port = try await server.start().port ?? 0
        client = RPCClient(targets: [("127.0.0.1", port)])
        var configuration = AgentConfiguration(hypervisorId: "hv1", region: "nyc1")
        configure(&configuration)
        let agent = HypervisorAgent(configuration, ticker: ticker)
        self.agent = agent
        let client = client
        run = Task { await agent.run(client: client) }
    }

    func stop() async {
        run.cancel()
        await client.close()
        await server.shutdownGracefully(timeout: .seconds(2))
    }

    /// A create of a droplet of `size` (Harpoon puts the size in the payload).
    func create(event: Int64, droplet: Int64, size: Scheduler_V2_Size) -> Harpoon_V1_Event {
        Harpoon_V1_Event(
            id: event, type: "create", dropletId: droplet, customer: "alice", region: "nyc1", hypervisorId: "hv1",
            status: .placed,
            payload: size.serializedBytes()
        )
    }

    /// The router's view of the agent, as the agent reported it.
    var reported: Scheduler_V2_HypervisorState? { router.hypervisors.first }

    func outcome(of event: Int64) -> Harpoon_V1_Event.Status? {
        results.reports.withLock { $0.last { $0.0 == event }?.1 }
    }
}

let oneGiB = Scheduler_V2_Size(slug: "s-1vcpu-1gb", vcpus: 1, memoryMb: 1024, diskGb: 25)

@Suite("a hypervisor agent tells the truth about its capacity")
struct AgentCapacityTests {
    @Test(
        "a create counts from the moment it is accepted: in flight, in the usage, in the droplet ids, before it completes"
    )
    func inFlightCounts() async throws {
        // The agent's time stands still until the test moves it: the create runs until then, and no heartbeat goes,
        // so only the state the agent sends on acceptance can show it.
        let ticker = Ticker(resolution: .seconds(3600))
        let setup = try await OneAgent(ticker: ticker) {
            $0.memoryMB = 3072
            $0.eventDuration = .seconds(3)
        }
        do {
            #expect(await eventually { setup.router.connectedAgents == 1 })
            #expect(try setup.router.deliver(setup.create(event: 1, droplet: 11, size: oneGiB)))
            #expect(await eventually { setup.reported?.inFlight == ["create"] })
            let state = try #require(setup.reported)
            #expect(state.usedMemoryMb == 1024)
            #expect(state.usedVcpus == 1)
            #expect(state.dropletCount == 1)
            #expect(state.dropletIds == [11])
            #expect(state.customers == ["alice"])
            #expect(await eventually { setup.outcome(of: 1) == .running })
            // Its time comes: the droplet is hosted, no longer in flight, and still counted.
            ticker.tick(now: .now.advanced(by: .seconds(4)))
            #expect(await eventually { setup.outcome(of: 1) == .completed })
            #expect(await eventually { setup.reported?.inFlight == [] })
            #expect(setup.reported?.usedMemoryMb == 1024)
            #expect(setup.reported?.dropletIds == [11])
        } catch {
            Issue.record("\(error)")
        }
        await setup.stop()
    }

    @Test("a create past the hypervisor's capacity is refused with an error naming the resource, and changes nothing")
    func refusesOverCapacity() async throws {
        let setup = try await OneAgent {
            $0.memoryMB = 3072  // two 1 GiB droplets above the 1 GiB reserve
            $0.eventDuration = .seconds(3)
            $0.heartbeatInterval = .milliseconds(50)
        }
        do {
            #expect(await eventually { setup.router.connectedAgents == 1 })
            for (event, droplet) in [(1, 11), (2, 12), (3, 13)] as [(Int64, Int64)] {
                _ = try setup.router.deliver(setup.create(event: event, droplet: droplet, size: oneGiB))
            }
            #expect(await eventually { setup.outcome(of: 3) == .errored })
            let refusal = try #require(setup.refusalError(3))
            #expect(refusal.contains("refuses droplet 13"), "\(refusal)")
            #expect(refusal.contains("memory: 2048 of 2048 MB in use"), "\(refusal)")
            // The two accepted creates are all the agent counts; the refused one is not among its droplets.
            #expect(await eventually { setup.reported?.dropletIds == [11, 12] })
            #expect(setup.reported?.usedMemoryMb == 2048)
            #expect(setup.reported?.recentErrors == 0)  // a refusal is not a failure of the hypervisor
            #expect(setup.refused(3))
            // Delivered again, it is decided again: refused while there is no room, accepted once there is.
            _ = try setup.router.deliver(setup.create(event: 3, droplet: 13, size: oneGiB))
            #expect(await eventually { setup.results.reports.withLock { $0.filter { $0.0 == 3 }.count } >= 2 })
            #expect(setup.agent.currentState().dropletIds == [11, 12])
            // A create whose size cannot be read is errored, for good (placing it elsewhere would not help).
            var garbled = setup.create(event: 4, droplet: 14, size: oneGiB)
            garbled.payload = [0xFF, 0xFF, 0xFF]
            _ = try setup.router.deliver(garbled)
            #expect(await eventually { setup.outcome(of: 4) == .errored })
            #expect(setup.refusalError(4)?.contains("size cannot be read") == true, "\(setup.refusalError(4) ?? "")")
            #expect(!setup.refused(4))
        } catch {
            Issue.record("\(error)")
        }
        await setup.stop()
    }

    @Test(
        "each resource has its limit, the scheduler's own: CPU overcommit, memory above the reserve, disk, droplet count"
    )
    func shortfalls() {
        var configuration = AgentConfiguration(hypervisorId: "hv1", region: "nyc1")
        configuration.cpus = 2
        configuration.memoryMB = 4096
        configuration.diskGB = 100
        configuration.maxDroplets = 3
        func used(
            vcpus: UInt32 = 0, memory: UInt64 = 0, disk: UInt64 = 0, droplets: UInt32 = 0
        ) -> Scheduler_V2_HypervisorState {
            Scheduler_V2_HypervisorState(
                usedVcpus: vcpus, usedMemoryMb: memory, usedDiskGb: disk, dropletCount: droplets)
        }
        #expect(HypervisorAgent.shortfall(of: oneGiB, beside: used(), configuration: configuration) == nil)
        // 8 = 2 × 4
        #expect(HypervisorAgent.shortfall(of: oneGiB, beside: used(vcpus: 7), configuration: configuration) == nil)
        #expect(
            HypervisorAgent.shortfall(of: oneGiB, beside: used(vcpus: 8), configuration: configuration)?.hasPrefix(
                "vcpus:") == true)
        let big = Scheduler_V2_Size(slug: "s-4vcpu-1gb", vcpus: 4, memoryMb: 1024, diskGb: 1)
        #expect(
            HypervisorAgent.shortfall(of: big, beside: used(), configuration: configuration)?.hasPrefix("vcpus:")
                == true)  // more than its CPUs
        // 3072 = 4096 − 1024
        #expect(HypervisorAgent.shortfall(of: oneGiB, beside: used(memory: 2048), configuration: configuration) == nil)
        #expect(
            HypervisorAgent.shortfall(of: oneGiB, beside: used(memory: 2049), configuration: configuration)?.hasPrefix(
                "memory:") == true)
        #expect(HypervisorAgent.shortfall(of: oneGiB, beside: used(disk: 75), configuration: configuration) == nil)
        #expect(
            HypervisorAgent.shortfall(of: oneGiB, beside: used(disk: 76), configuration: configuration)?.hasPrefix(
                "disk:") == true)
        #expect(HypervisorAgent.shortfall(of: oneGiB, beside: used(droplets: 2), configuration: configuration) == nil)
        #expect(
            HypervisorAgent.shortfall(of: oneGiB, beside: used(droplets: 3), configuration: configuration)?.hasPrefix(
                "droplets:") == true)
    }
}

@Suite("the event router's reports to the scheduler")
struct RouterFleetReportTests {
    @Test("complete at the start, after a failed report and when the scheduler asks; only what changed otherwise")
    func completeReports() async throws {
        // The agent reports itself once, in its hello; the test makes its state change by hand, so each flush's
        // contents are known.
        let setup = try await OneAgent { $0.heartbeatInterval = .seconds(60) }
        let state = Scheduler_V2_HypervisorState(id: "hv1", region: "nyc1", cpus: 32, memoryMb: 131_072, diskGb: 4000)
        var count: Int { setup.fleet.reports.withLock { $0.count } }
        #expect(await eventually { setup.router.connectedAgents == 1 })
        // The first report is complete, even before anything changed.
        await setup.router.flush()
        #expect(setup.fleet.last?.complete == true)
        #expect(setup.fleet.last?.ids == ["hv1"])
        #expect(setup.fleet.last?.region == "nyc1")
        // Nothing changed: nothing is sent.
        await setup.router.flush()
        #expect(count == 1)
        // Then only changes.
        setup.router.heartbeat(state, from: "hv1")
        await setup.router.flush()
        #expect(count == 2)
        #expect(setup.fleet.last?.complete == false)
        // The scheduler asks for everything (it restarted): the next report is complete, though nothing changed.
        setup.fleet.wantsComplete.withLock { $0 = true }
        setup.router.heartbeat(state, from: "hv1")
        await setup.router.flush()
        setup.fleet.wantsComplete.withLock { $0 = false }
        await setup.router.flush()
        #expect(count == 4)
        #expect(setup.fleet.last?.complete == true)
        #expect(setup.fleet.last?.ids == ["hv1"])
        // A failed report: the next one is complete.
        setup.fleet.failing.withLock { $0 = true }
        setup.router.heartbeat(state, from: "hv1")
        await setup.router.flush()
        setup.fleet.failing.withLock { $0 = false }
        await setup.router.flush()
        #expect(count == 5)
        #expect(setup.fleet.last?.complete == true)
        // A complete report goes even with no agent connected: the region has nothing else.
        await setup.stop()
        #expect(await eventually { setup.router.connectedAgents == 0 })
        #expect(setup.router.hypervisors.isEmpty)
        setup.fleet.failing.withLock { $0 = true }
        setup.router.heartbeat(state, from: "hv1")
        await setup.router.flush()
        setup.fleet.failing.withLock { $0 = false }
        await setup.router.flush()
        #expect(count == 6)
        #expect(setup.fleet.last?.complete == true)
        #expect(setup.fleet.last?.ids == [])
    }
}

@Suite("the event router's reports to several scheduler replicas")
struct RouterReplicaReportTests {
    @Test("every replica gets every report; one that failed gets a complete report next, the others only what changed")
    func perReplica() async {
        let first = RecordingFleet()
        let second = RecordingFleet()
        let router = Router(region: "nyc1", results: RecordingResults(), fleet: first, replicas: [second])
        let state = Scheduler_V2_HypervisorState(id: "hv1", region: "nyc1", cpus: 8, memoryMb: 8192, diskGb: 100)
        router.heartbeat(state, from: "hv1")
        await router.flush()
        #expect(first.last?.complete == true && second.last?.complete == true)
        second.failing.withLock { $0 = true }
        router.heartbeat(state, from: "hv1")
        await router.flush()
        #expect(first.last?.complete == false && first.last?.ids == ["hv1"])
        second.failing.withLock { $0 = false }
        router.heartbeat(state, from: "hv1")
        await router.flush()
        #expect(first.last?.complete == false)
        #expect(second.last?.complete == true)
        #expect(first.reports.withLock { $0.count } == 3 && second.reports.withLock { $0.count } == 2)
    }
}

extension OneAgent {
    /// The error of `event`'s errored outcome, as the router forwarded it.
    func refusalError(_ event: Int64) -> String? {
        results.errors.withLock { $0[event] }
    }

    /// Whether `event` was reported refused (no room: it can be placed elsewhere).
    func refused(_ event: Int64) -> Bool {
        results.refused.withLock { $0.contains(event) }
    }
}

@Suite("an agent's bookkeeping is bounded and forgets old errors")
struct AgentBookkeepingTests {
    @Test("recent errors are those within the window: a hypervisor with four old failures comes back")
    func errorsDecay() {
        let start = ContinuousClock.now
        var errors = RecentErrors(window: .seconds(600))
        for minute in 0..<4 { errors.record(at: start + .seconds(60 * minute)) }
        #expect(errors.count(at: start + .seconds(200)) == 4)
        #expect(errors.count(at: start + .seconds(601)) == 3)  // the first is 601 s old
        #expect(errors.count(at: start + .seconds(781)) == 0)  // the last is 601 s old
        errors.record(at: start + .seconds(800))
        #expect(errors.count(at: start + .seconds(800)) == 1)
        // Bounded: a storm of failures keeps at most `limit` times.
        var storm = RecentErrors(window: .seconds(600), limit: 10)
        for second in 0..<100 { storm.record(at: start + .seconds(second)) }
        #expect(storm.count(at: start + .seconds(100)) == 10)
    }

    @Test("outcomes are remembered up to a capacity, the oldest forgotten first")
    func outcomesBounded() {
        var outcomes = RememberedOutcomes(capacity: 3)
        for id in 1...10 as ClosedRange<Int64> { outcomes.remember(.init(eventId: id, status: .completed)) }
        #expect(outcomes.count == 3)
        #expect(outcomes[7] == nil)
        #expect(outcomes[8]?.status == .completed && outcomes[10] != nil)
        // Remembering one again (a repeated outcome) does not make it count twice.
        outcomes.remember(.init(eventId: 10, status: .errored))
        #expect(outcomes.count == 3)
        #expect(outcomes[10]?.status == .errored)
        #expect(outcomes[8] != nil)
    }

    @Test("a create redelivered after its outcome was forgotten is answered, not run again")
    func forgottenCreateNotRunTwice() async throws {
        let setup = try await OneAgent {
            $0.memoryMB = 4096
            $0.eventDuration = .zero
            $0.rememberedOutcomes = 1
            $0.heartbeatInterval = .seconds(60)
        }
        #expect(await eventually { setup.router.connectedAgents == 1 })
        _ = try setup.router.deliver(setup.create(event: 1, droplet: 11, size: oneGiB))
        _ = try setup.router.deliver(setup.create(event: 2, droplet: 12, size: oneGiB))
        #expect(await eventually { setup.outcome(of: 2) == .completed })
        // Event 1's outcome is forgotten (one remembered); delivered again, the droplet is found, not created twice.
        _ = try setup.router.deliver(setup.create(event: 1, droplet: 11, size: oneGiB))
        #expect(await eventually { setup.results.reports.withLock { $0.filter { $0.0 == 1 }.count } == 2 })
        #expect(setup.outcome(of: 1) == .completed)
        #expect(setup.agent.dropletCount == 2)
        #expect(setup.agent.currentState().usedMemoryMb == 2048)
        await setup.stop()
    }
}

@Suite("a fleet's shared heartbeat timer")
struct TickerTests {
    @Test("a sleeper wakes at the first tick at or after its deadline, never before; a cancelled one at once")
    func ticks() async throws {
        let ticker = Ticker(resolution: .seconds(3600))  // ticked by hand below
        let start = ContinuousClock.now
        // Each task runs at once up to its first suspension: its sleep is registered when `Task.immediate` returns.
        let short = Task.immediate { try await ticker.sleep(for: .seconds(10)) }
        let long = Task.immediate { try await ticker.sleep(for: .seconds(20)) }
        let cancelled = Task.immediate { try await ticker.sleep(for: .seconds(30)) }
        #expect(ticker.waiting == 3)
        #expect(ticker.tick(now: start.advanced(by: .seconds(5))) == 0)
        #expect(ticker.tick(now: start.advanced(by: .seconds(15))) == 1)
        try await short.value
        #expect(ticker.waiting == 2)
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        #expect(ticker.waiting == 1)
        #expect(ticker.tick(now: start.advanced(by: .seconds(25))) == 1)
        try await long.value
        #expect(ticker.waiting == 0)
        // A task cancelled before it sleeps does not sleep.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await ticker.sleep(for: .seconds(1))
        }
        await #expect(throws: CancellationError.self) { try await early.value }
        #expect(ticker.waiting == 0)
    }
}
