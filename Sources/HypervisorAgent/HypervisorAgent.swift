package import EventRouterAPI
internal import Foundation
internal import Logging
internal import RPCCore
internal import RequestContext
internal import Synchronization

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
    /// Memory the hypervisor keeps for itself: droplets never take it.
    package var memoryReserveMB: UInt64 = 1024
    /// Virtual CPUs allowed per physical CPU.
    package var cpuOvercommit = 4.0
    /// Droplets it hosts at most.
    package var maxDroplets = 135
    /// How long a failure counts among the recent errors it reports.
    package var errorWindow: Duration = .seconds(600)
    /// Outcomes remembered, so that a redelivered event is answered instead of run again.
    package var rememberedOutcomes = 10_000

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
///
/// A droplet counts from the moment the agent accepts its create: the states it reports carry the operations running
/// (`in_flight`) and the room their droplets will take, so the scheduler's view is right before any create completes.
/// A create that would take the hypervisor past its capacity is refused with an error that names the resource: the
/// last line of defence against an oversubscribing placement, not the way placements are kept in bounds.
package final class HypervisorAgent: Sendable {
    private struct Hosted {
        var size: Scheduler_V2_Size
        var customer: String
        var address: String
    }

    /// An event accepted and not finished; for a create, the droplet it brings.
    private struct Running {
        var type: String
        var dropletId: Int64
        var customer: String
        var size: Scheduler_V2_Size?
    }

    private struct State {
        var droplets: [Int64: Hosted] = [:]
        var outcomes: RememberedOutcomes
        var running: [Int64: Running] = [:]
        var recentErrors: RecentErrors
        var nextHost: UInt8 = 2
        var outgoing: AsyncStream<Eventrouter_V1_AgentMessage>.Continuation?
        var connections = 0
        var heartbeats = 0
        /// Why the hypervisor is in maintenance (an operator's drain); empty when it is not.
        var maintenance = ""
        /// Whether it has learnt what it hosted before it started (its router's inventory, from Harpoon).
        var inventoryTaken = false
        /// Host octets of the hosted droplets' addresses, so a new droplet never gets one in use.
        var hostsInUse: Set<UInt8> = []

        /// Each droplet the hypervisor hosts or is creating, once.
        func forEachDroplet(_ body: (_ id: Int64, _ size: Scheduler_V2_Size, _ customer: String) -> Void) {
            for (id, hosted) in droplets { body(id, hosted.size, hosted.customer) }
            for running in running.values where running.type == "create" && droplets[running.dropletId] == nil {
                body(running.dropletId, running.size ?? Scheduler_V2_Size(), running.customer)
            }
        }

        /// What hosted droplets and accepted creates take, as a state's used fields and droplet count.
        func usage() -> Scheduler_V2_HypervisorState {
            var used = Scheduler_V2_HypervisorState()
            forEachDroplet { _, size, _ in
                used.usedVcpus += size.vcpus
                used.usedMemoryMb += size.memoryMb
                used.usedDiskGb += size.diskGb
                used.dropletCount += 1
            }
            return used
        }
    }

    package let configuration: AgentConfiguration
    private let state: Mutex<State>

    /// Where the heartbeats and the running events wait: a fleet's shared ticker, or (nil) timers of the agent's own.
    private let ticker: Ticker?
    private let logger = Logger(label: "agent")

    package init(_ configuration: AgentConfiguration, ticker: Ticker? = nil) {
        self.configuration = configuration
        self.ticker = ticker
        state = Mutex(
            State(
                outcomes: RememberedOutcomes(capacity: configuration.rememberedOutcomes),
                recentErrors: RecentErrors(window: configuration.errorWindow)
            ))
    }

    /// Droplets this agent hosts.
    package var dropletCount: Int { state.withLock { $0.droplets.count } }
    /// Periodic heartbeats sent so far.
    package var heartbeatsSent: Int { state.withLock { $0.heartbeats } }
    /// Streams opened so far (reconnects included).
    package var connectionCount: Int { state.withLock { $0.connections } }
    /// Events this agent finished or refused (each once).
    package var eventsRun: Int { state.withLock { $0.outcomes.count } }

    /// The state reported in hellos and heartbeats: hosted droplets and those whose create is running count alike.
    package func currentState() -> Scheduler_V2_HypervisorState {
        state.withLock { state in
            var current = Scheduler_V2_HypervisorState(
                id: configuration.hypervisorId, region: configuration.region, cpus: configuration.cpus,
                memoryMb: configuration.memoryMB, diskGb: configuration.diskGB
            )
            var customers = Set<String>()
            var dropletIds: [Int64] = []
            state.forEachDroplet { id, size, customer in
                current.usedVcpus += size.vcpus
                current.usedMemoryMb += size.memoryMb
                current.usedDiskGb += size.diskGb
                customers.insert(customer)
                dropletIds.append(id)
            }
            current.dropletCount = UInt32(dropletIds.count)
            current.recentErrors = UInt32(state.recentErrors.count(at: .now))
            current.customers = customers.sorted()
            current.dropletIds = dropletIds.sorted()
            current.inFlight = Set(state.running.values.map(\.type)).sorted()
            current.maintenance = state.maintenance
            return current
        }
    }

    /// Why a droplet of `size` cannot be added to a hypervisor of `configuration` that already holds `used` (hosted
    /// droplets and accepted creates), naming the resource; `nil` when it fits. The same limits as the scheduler's
    /// rules: CPU overcommit, memory above the hypervisor's reserve, disk, and a droplet count.
    package static func shortfall(
        of size: Scheduler_V2_Size, beside used: Scheduler_V2_HypervisorState, configuration: AgentConfiguration
    ) -> String? {
        let vcpus = UInt64(used.usedVcpus) + UInt64(size.vcpus)
        let vcpuLimit = Double(configuration.cpus) * configuration.cpuOvercommit
        if size.vcpus > configuration.cpus || Double(vcpus) > vcpuLimit {
            return
                "vcpus: \(used.usedVcpus) of \(Int(vcpuLimit)) in use (\(configuration.cpus) CPUs, overcommit \(configuration.cpuOvercommit)); \(size.slug) needs \(size.vcpus)"
        }
        let memoryLimit =
            configuration.memoryMB > configuration.memoryReserveMB
            ? configuration.memoryMB - configuration.memoryReserveMB : 0
        if used.usedMemoryMb + size.memoryMb > memoryLimit {
            return
                "memory: \(used.usedMemoryMb) of \(memoryLimit) MB in use (\(configuration.memoryReserveMB) MB kept for the hypervisor); \(size.slug) needs \(size.memoryMb) MB"
        }
        if used.usedDiskGb + size.diskGb > configuration.diskGB {
            return "disk: \(used.usedDiskGb) of \(configuration.diskGB) GB in use; \(size.slug) needs \(size.diskGb) GB"
        }
        if Int(used.dropletCount) + 1 > configuration.maxDroplets {
            return "droplets: hosts \(used.dropletCount) of at most \(configuration.maxDroplets)"
        }
        return nil
    }

    /// Waits on the fleet's ticker if there is one (a test ticks it by hand), else on a timer of the agent's own.
    private func sleep(for duration: Duration) async throws {
        if let ticker { try await ticker.sleep(for: duration) } else { try await Task.sleep(for: duration) }
    }

    /// How the agent waits before connecting again: 100 ms doubling to 5 s, at least half of that.
    static let reconnectBackoff = Backoff(
        initial: .milliseconds(100), multiplier: 2, maximum: .seconds(5), jitter: .half)

    /// Connects, serves the stream, and reconnects with backoff (100 ms doubling to 5 s) until cancelled.
    package func run(client: RPCClient) async {
        var failures = 0
        while !Task.isCancelled {
            let started = ContinuousClock.now
            var ended: (any Error)?
            do {
                try await session(client: client)
            } catch {
                ended = error
            }
            if Task.isCancelled { break }
            // A session that lasted a while was a success: start the backoff over.
            failures = ContinuousClock.now - started > .seconds(5) ? 1 : failures + 1
            // The first failure in a row is news; the retries after it (a fleet's worth, while a router is down) are
            // not, unless asked for.
            logger.log(
                level: failures == 1 ? .notice : .debug, "the stream to the router ended; connecting again",
                metadata: [
                    "hypervisor_id": .string(configuration.hypervisorId),
                    "error": .string(ended.map { "\($0)" } ?? "the router ended it"),
                    "failures_in_a_row": .stringConvertible(failures),
                ])
            try? await Task.sleep(for: Self.reconnectBackoff.delay(afterFailures: failures))
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
        let wantsInventory = state.withLock { !$0.inventoryTaken }
        let hello = Eventrouter_V1_AgentHello(
            hypervisorId: configuration.hypervisorId, region: configuration.region, state: currentState(),
            wantsInventory: wantsInventory
        )
        let interval = configuration.heartbeatInterval
        try await Eventrouter_V1_EventRouter.Client(client).connect { writer in
            try await writer.write(Eventrouter_V1_AgentMessage(kind: .hello(hello)))
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    // The state goes only when it differs from the last the heartbeat sent (the hello's, at first);
                    // otherwise the heartbeat says only that the agent is alive.
                    // The first beat comes after a random part of the interval, so a fleet that connects at once does
                    // not beat at once ever after.
                    var last = hello.state
                    var wait = interval * Double.random(in: 0.5...1)
                    while !Task.isCancelled {
                        try await self.sleep(for: wait)
                        wait = interval
                        let current = self.currentState()
                        let changed = current != last
                        if changed { last = current }
                        self.state.withLock { $0.heartbeats += 1 }
                        continuation.yield(
                            Eventrouter_V1_AgentMessage(kind: .heartbeat(.init(state: changed ? current : nil))))
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
                switch message.kind {
                case .event(let event)?:
                    self.receive(event, pushMicros: Self.pushMicros(since: message.routerUnixMicros))
                case .inventory(let inventory)?: self.adopt(inventory)
                case nil: break
                }
            }
            continuation.finish()
        }
    }

    /// What the hypervisor hosted before this agent started, as Harpoon recorded it: taken once, before any event (the
    /// router sends it first). Droplets the agent already knows are left as they are.
    private func adopt(_ inventory: Eventrouter_V1_Inventory) {
        let adopted = state.withLock { state -> Bool in
            guard !state.inventoryTaken else { return false }
            state.inventoryTaken = true
            for droplet in inventory.droplets where state.droplets[droplet.id] == nil {
                state.droplets[droplet.id] = Hosted(
                    size: droplet.size ?? Scheduler_V2_Size(), customer: droplet.customer, address: droplet.ipv4Address)
                if let host = droplet.ipv4Address.split(separator: ".").last.flatMap({ UInt8($0) }) {
                    state.hostsInUse.insert(host)
                }
            }
            if state.maintenance.isEmpty { state.maintenance = inventory.maintenance }
            return true
        }
        // The state with what it hosts goes up at once: until then its router does not report it.
        if adopted { send(Eventrouter_V1_AgentMessage(kind: .heartbeat(.init(state: currentState())))) }
    }

    private func send(_ message: Eventrouter_V1_AgentMessage) {
        _ = state.withLock { $0.outgoing }?.yield(message)
    }

    /// Microseconds from the router's stamp to now (0 when there is none).
    static func pushMicros(since routerUnixMicros: Int64) -> UInt64 {
        guard routerUnixMicros > 0 else { return 0 }
        let now = Int64(Date().timeIntervalSince1970 * 1_000_000)
        return UInt64(max(1, now - routerUnixMicros))
    }

    /// Runs an event, or answers it again; `pushMicros` (its time from the router) rides on the first report.
    private func receive(_ event: Harpoon_V1_Event, pushMicros: UInt64 = 0) {
        logger.debug(
            "event", resuming: event.requestId, traceparent: event.traceparent,
            metadata: [
                "event_id": .stringConvertible(event.id), "type": .string(event.type),
                "droplet_id": .stringConvertible(event.dropletId),
                "hypervisor_id": .string(configuration.hypervisorId),
            ])
        enum Action {
            case resend(Eventrouter_V1_EventProgress)
            case ignore, run
        }
        let action = state.withLock { state -> Action in
            if let outcome = state.outcomes[event.id] { return .resend(outcome) }
            if state.running[event.id] != nil { return .ignore }
            // A create whose outcome is no longer remembered, for a droplet already here: it ran; say so again.
            if event.type == "create", let hosted = state.droplets[event.dropletId] {
                let outcome = Eventrouter_V1_EventProgress(
                    eventId: event.id, status: .completed, ipv4Address: hosted.address)
                state.outcomes.remember(outcome)
                return .resend(outcome)
            }
            var running = Running(type: event.type, dropletId: event.dropletId, customer: event.customer)
            if event.type == "create" {
                let size: Scheduler_V2_Size
                do {
                    size = try Scheduler_V2_Size(serializedBytes: event.payload)
                } catch {
                    // No size, no droplet: an error of the event itself, final wherever it would be placed.
                    let outcome = Eventrouter_V1_EventProgress(
                        eventId: event.id, status: .errored, error: "the create's size cannot be read: \(error)"
                    )
                    state.outcomes.remember(outcome)
                    return .resend(outcome)
                }
                running.size = size
                if let shortfall = Self.shortfall(of: size, beside: state.usage(), configuration: configuration) {
                    // Refused, not failed: the hypervisor is healthy, so its recent errors do not count it. Not
                    // remembered either: the event may come back, placed here again once there is room.
                    return .resend(
                        Eventrouter_V1_EventProgress(
                            eventId: event.id, status: .errored,
                            error:
                                "hypervisor \(configuration.hypervisorId) refuses droplet \(event.dropletId): not enough \(shortfall)",
                            refused: true
                        ))
                }
            }
            state.running[event.id] = running
            return .run
        }
        switch action {
        case .resend(var outcome):
            outcome.pushMicros = pushMicros
            send(Eventrouter_V1_AgentMessage(kind: .progress(outcome)))
        case .ignore:
            break
        case .run where configuration.eventDuration == .zero:
            // Done at once: the outcome is the only message (it acknowledges the event too), which halves the
            // messages on the stream for a fleet of instant agents.
            let started = Spans.now
            var outcome = finish(event)
            Self.recordRun(event, outcome, started: started)
            outcome.pushMicros = pushMicros
            send(Eventrouter_V1_AgentMessage(kind: .progress(outcome)))
            // A drain or its end changes what the scheduler may do at once.
            if event.type == "maintenance" {
                send(Eventrouter_V1_AgentMessage(kind: .heartbeat(.init(state: currentState()))))
            }
        case .run:
            send(Eventrouter_V1_AgentMessage(kind: .ack(.init(eventId: event.id))))
            send(
                Eventrouter_V1_AgentMessage(
                    kind: .progress(.init(eventId: event.id, status: .running, pushMicros: pushMicros))))
            // The new operation, and the room its droplet takes, reach the scheduler now, not at the next heartbeat.
            send(Eventrouter_V1_AgentMessage(kind: .heartbeat(.init(state: currentState()))))
            let started = Spans.now
            Task {
                try? await self.sleep(for: self.configuration.eventDuration)
                let outcome = self.finish(event)
                Self.recordRun(event, outcome, started: started)
                self.send(Eventrouter_V1_AgentMessage(kind: .progress(outcome)))
                self.send(Eventrouter_V1_AgentMessage(kind: .heartbeat(.init(state: self.currentState()))))
            }
        }
    }

    /// The span of an event's run on this hypervisor, in its request's trace.
    private static func recordRun(_ event: Harpoon_V1_Event, _ outcome: Eventrouter_V1_EventProgress, started: UInt64) {
        Spans.resumed(
            "run \(event.type)", kind: .internal, traceparent: event.traceparent, start: started,
            attributes: [
                "event.id": String(event.id), "droplet.id": String(event.dropletId),
                "hypervisor.id": event.hypervisorId,
            ],
            error: outcome.status == .errored ? outcome.error : nil
        )
    }

    /// Carries out `event` (the simulated part: the hosted droplets change) and records its outcome.
    private func finish(_ event: Harpoon_V1_Event) -> Eventrouter_V1_EventProgress {
        let fails = configuration.failureRate > 0 && Double.random(in: 0..<1) < configuration.failureRate
        return state.withLock { state -> Eventrouter_V1_EventProgress in
            let running = state.running.removeValue(forKey: event.id)
            var outcome = Eventrouter_V1_EventProgress(eventId: event.id, status: .completed)
            if fails {
                state.recentErrors.record(at: .now)
                outcome.status = .errored
                outcome.error = "simulated failure running \(event.type) on \(configuration.hypervisorId)"
            } else {
                switch event.type {
                case "create":
                    let size = running?.size ?? Scheduler_V2_Size()
                    // The next host octet not in use (2...254; a hypervisor hosts at most 135 droplets).
                    var host = state.nextHost
                    for _ in 0..<253 where state.hostsInUse.contains(host) { host = host == 254 ? 2 : host + 1 }
                    state.nextHost = host == 254 ? 2 : host + 1
                    state.hostsInUse.insert(host)
                    let address =
                        "10.\(configuration.region.utf8.reduce(0) { ($0 &+ Int($1)) % 250 }).\(configuration.subnet).\(host)"
                    state.droplets[event.dropletId] = Hosted(size: size, customer: event.customer, address: address)
                    outcome.ipv4Address = address
                case "destroy":
                    if let gone = state.droplets.removeValue(forKey: event.dropletId),
                        let host = gone.address.split(separator: ".").last.flatMap({ UInt8($0) })
                    {
                        state.hostsInUse.remove(host)
                    }
                case "maintenance":
                    state.maintenance = String(decoding: event.payload, as: UTF8.self)
                default:
                    break
                }
            }
            state.outcomes.remember(outcome)
            return outcome
        }
    }
}
