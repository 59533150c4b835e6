internal import Synchronization
package import EventRouterAPI

/// A simulated hypervisor's settings.
package struct AgentConfiguration: Sendable, Hashable {
    package var hypervisorId: String
    package var region: String
    package var cpus: UInt32 = 32
    package var memoryMB: UInt64 = 131_072
    package var diskGB: UInt64 = 4000
    /// The third octet of the agent's 10.x.y.0/24 subnet (its droplets' addresses).
    package var subnet: UInt8 = 0
    /// How long each event takes to run.
    package var eventDuration: Duration = .milliseconds(50)
    /// The fraction of events that fail (0...1).
    package var failureRate: Double = 0
    package var heartbeatInterval: Duration = .milliseconds(500)

    package init(hypervisorId: String, region: String) {
        self.hypervisorId = hypervisorId
        self.region = region
    }
}

/// A simulated hypervisor agent: connects to its region's router with one bidirectional stream, reports its state,
/// runs the events it receives (create, destroy, power) and reports their outcomes; reconnects with backoff.
///
/// Events are idempotent by id: an event the agent has finished is not run again when redelivered; its outcome is
/// sent again instead.
package final class HypervisorAgent: Sendable {
    private struct Hosted {
        var size: Scheduler_V2_Size
        var customer: String
        var address: String
    }

    private struct State {
        var droplets: [Int64: Hosted] = [:]
        var outcomes: [Int64: Eventrouter_V1_EventProgress] = [:]
        var running: Set<Int64> = []
        var recentErrors = 0
        var nextHost: UInt8 = 2
        var outgoing: AsyncStream<Eventrouter_V1_AgentMessage>.Continuation?
        var connections = 0
    }

    package let configuration: AgentConfiguration
    private let state = Mutex(State())

    package init(_ configuration: AgentConfiguration) {
        self.configuration = configuration
    }

    /// Droplets this agent hosts.
    package var dropletCount: Int { state.withLock { $0.droplets.count } }
    /// Streams opened so far (reconnects included).
    package var connectionCount: Int { state.withLock { $0.connections } }
    /// Events this agent ran (each once).
    package var eventsRun: Int { state.withLock { $0.outcomes.count } }

    /// The state reported in hellos and heartbeats.
    package func currentState() -> Scheduler_V2_HypervisorState {
        state.withLock { state in
            var current = Scheduler_V2_HypervisorState(
                id: configuration.hypervisorId, region: configuration.region, cpus: configuration.cpus,
                memoryMb: configuration.memoryMB, diskGb: configuration.diskGB
            )
            for hosted in state.droplets.values {
                current.usedVcpus += hosted.size.vcpus
                current.usedMemoryMb += hosted.size.memoryMb
                current.usedDiskGb += hosted.size.diskGb
            }
            current.dropletCount = UInt32(state.droplets.count)
            current.recentErrors = UInt32(state.recentErrors)
            current.customers = Array(Set(state.droplets.values.map(\.customer))).sorted()
            current.dropletIds = state.droplets.keys.sorted()
            return current
        }
    }

    /// Connects, serves the stream, and reconnects with backoff (100 ms doubling to 5 s) until cancelled.
    package func run(client: RPCClient) async {
        var failures = 0
        while !Task.isCancelled {
            let started = ContinuousClock.now
            do {
                try await session(client: client)
            } catch {}
            if Task.isCancelled { break }
            // A session that lasted a while was a success: start the backoff over.
            failures = ContinuousClock.now - started > .seconds(5) ? 1 : failures + 1
            let ceiling = min(5000, 100 << min(failures - 1, 6))
            try? await Task.sleep(for: .milliseconds(Int.random(in: ceiling / 2...ceiling)))
        }
    }

    private func session(client: RPCClient) async throws {
        let (outgoing, continuation) = AsyncStream.makeStream(of: Eventrouter_V1_AgentMessage.self)
        state.withLock { state in
            state.outgoing = continuation
            state.connections += 1
        }
        defer {
            state.withLock { $0.outgoing = nil }
            continuation.finish()
        }
        let hello = Eventrouter_V1_AgentHello(hypervisorId: configuration.hypervisorId, region: configuration.region, state: currentState())
        let interval = configuration.heartbeatInterval
        try await Eventrouter_V1_EventRouter.Client(client).connect { writer in
            try await writer.write(Eventrouter_V1_AgentMessage(kind: .hello(hello)))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    while !Task.isCancelled {
                        try await Task.sleep(for: interval)
                        continuation.yield(Eventrouter_V1_AgentMessage(kind: .heartbeat(.init(state: self.currentState()))))
                    }
                }
                group.addTask {
                    for await message in outgoing { try await writer.write(message) }
                }
                _ = try await group.next()
                group.cancelAll()
            }
        } handler: { stream in
            for try await message in stream {
                if case .event(let event)? = message.kind { self.receive(event) }
            }
            continuation.finish()
        }
    }

    private func send(_ message: Eventrouter_V1_AgentMessage) {
        _ = state.withLock { $0.outgoing }?.yield(message)
    }

    private func receive(_ event: Harpoon_V1_Event) {
        enum Action { case resend(Eventrouter_V1_EventProgress), ignore, run }
        let action = state.withLock { state -> Action in
            if let outcome = state.outcomes[event.id] { return .resend(outcome) }
            if state.running.contains(event.id) { return .ignore }
            state.running.insert(event.id)
            return .run
        }
        switch action {
        case .resend(let outcome):
            send(Eventrouter_V1_AgentMessage(kind: .progress(outcome)))
        case .ignore:
            break
        case .run where configuration.eventDuration == .zero:
            // Done at once: the outcome is the only message (it acknowledges the event too), which halves the
            // messages on the stream for a fleet of instant agents.
            send(Eventrouter_V1_AgentMessage(kind: .progress(finish(event))))
        case .run:
            send(Eventrouter_V1_AgentMessage(kind: .ack(.init(eventId: event.id))))
            send(Eventrouter_V1_AgentMessage(kind: .progress(.init(eventId: event.id, status: .running))))
            Task {
                try? await Task.sleep(for: self.configuration.eventDuration)
                self.send(Eventrouter_V1_AgentMessage(kind: .progress(self.finish(event))))
            }
        }
    }

    /// Carries out `event` (the simulated part: the hosted droplets change) and records its outcome.
    private func finish(_ event: Harpoon_V1_Event) -> Eventrouter_V1_EventProgress {
        let fails = configuration.failureRate > 0 && Double.random(in: 0..<1) < configuration.failureRate
        return state.withLock { state -> Eventrouter_V1_EventProgress in
            state.running.remove(event.id)
            var outcome = Eventrouter_V1_EventProgress(eventId: event.id, status: .completed)
            if fails {
                state.recentErrors += 1
                outcome.status = .errored
                outcome.error = "simulated failure running \(event.type) on \(configuration.hypervisorId)"
            } else {
                switch event.type {
                case "create":
                    let size = (try? Scheduler_V2_Size(serializedBytes: event.payload)) ?? Scheduler_V2_Size()
                    let host = state.nextHost
                    state.nextHost = host == 254 ? 2 : host + 1
                    let address = "10.\(configuration.region.utf8.reduce(0) { ($0 &+ Int($1)) % 250 }).\(configuration.subnet).\(host)"
                    state.droplets[event.dropletId] = Hosted(size: size, customer: event.customer, address: address)
                    outcome.ipv4Address = address
                case "destroy":
                    state.droplets[event.dropletId] = nil
                default:
                    break
                }
            }
            state.outcomes[event.id] = outcome
            return outcome
        }
    }
}
