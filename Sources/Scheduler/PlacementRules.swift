package import SchedulerAPI

/// The limits the scheduling rules use (DESIGN.md, "Scheduling rules").
package struct PlacementPolicy: Sendable, Hashable {
    /// More recent errors than this skips a hypervisor.
    package var maxRecentErrors = 3
    /// A hypervisor hosts at most this many droplets.
    package var maxDroplets = 135
    /// Virtual CPUs allowed per physical CPU.
    package var cpuOvercommit = 4.0
    /// Memory a hypervisor always keeps free for itself.
    package var memoryFloorMB: UInt64 = 1024
    /// Operations that make a hypervisor busy: no new droplet while one runs.
    package var busyOperations: Set<String> = ["create", "restore", "pdu_reboot", "ipmi_reboot"]
    /// Score taken off a hypervisor that already hosts one of the customer's droplets.
    package var sameCustomerPenalty = 0.5

    package init() {}
}

/// What placements hold on a hypervisor, as plain numbers (what the rules compare).
package struct HeldTotals: Sendable, Hashable {
    package var vcpus: UInt64 = 0
    package var memoryMB: UInt64 = 0
    package var diskGB: UInt64 = 0
    package var droplets = 0

    package init() {}
}

/// Capacity held by placements whose events have not finished yet.
package struct HeldCapacity: Sendable, Hashable {
    package var totals = HeldTotals()
    /// Holds per customer.
    package var customers: [String: Int] = [:]

    package init() {}

    package var isEmpty: Bool { totals.droplets == 0 }

    package mutating func add(_ size: Scheduler_V2_Size, customer: String) {
        totals.vcpus += UInt64(size.vcpus)
        totals.memoryMB += size.memoryMb
        totals.diskGB += size.diskGb
        totals.droplets += 1
        customers[customer, default: 0] += 1
    }

    package mutating func remove(_ size: Scheduler_V2_Size, customer: String) {
        totals.vcpus -= min(totals.vcpus, UInt64(size.vcpus))
        totals.memoryMB -= min(totals.memoryMB, size.memoryMb)
        totals.diskGB -= min(totals.diskGB, size.diskGb)
        totals.droplets = max(0, totals.droplets - 1)
        if let count = customers[customer] { customers[customer] = count > 1 ? count - 1 : nil }
    }
}

/// The verdict on one hypervisor for one placement.
package enum Verdict: Sendable, Hashable {
    case candidate(Scheduler_V2_Candidate)
    case skip(Scheduler_V2_Skip)
}

/// Why a hypervisor is skipped, as data: the text is made only when someone reads it (Explain, or a placement that
/// found nothing), not for each of the hundreds of hypervisors a successful placement passes over.
package enum SkipReason: Sendable, Hashable {
    case cpus(have: UInt32, need: UInt32)
    case memory(have: UInt64, need: UInt64, floor: UInt64)
    case disk(have: UInt64, need: UInt64)
    case errors(Int32, max: Int)
    case maintenance(String)
    case unresponsive
    case busy(String)
    case droplets(Int, max: Int)
    case overcommit(vcpus: UInt64, cpus: UInt32, limit: Double)
    case memoryFree(UInt64, need: UInt64)
    case diskFree(UInt64, need: UInt64)

    package var text: String {
        switch self {
        case .cpus(let have, let need): "has \(have) CPUs; the size needs \(need)"
        case .memory(let have, let need, let floor):
            "has \(have) MB of memory; the size needs \(need) MB above a \(floor) MB floor"
        case .disk(let have, let need): "has \(have) GB of disk; the size needs \(need) GB"
        case .errors(let count, let max): "has \(count) recent errors (more than \(max))"
        case .maintenance(let what): "is in maintenance: \(what)"
        case .unresponsive: "is unresponsive"
        case .busy(let operation): "is busy with \(operation)"
        case .droplets(let count, let max): "hosts \(count) droplets (at most \(max))"
        case .overcommit(let vcpus, let cpus, let limit):
            "would run \(vcpus) vCPUs on \(cpus) CPUs (overcommit at most \(limit))"
        case .memoryFree(let free, let need): "has \(free) MB of memory free above the floor; the size needs \(need) MB"
        case .diskFree(let free, let need): "has \(free) GB of disk free; the size needs \(need) GB"
        }
    }
}

/// One hypervisor judged for one placement, before any text or message is made of it.
package enum Assessment: Sendable, Hashable {
    case candidate(score: Double, hostsCustomer: Bool)
    /// `transient`: waiting may help (the hypervisor is busy or unhealthy, or only holds are in the way).
    case skip(SkipReason, transient: Bool)
}

/// The scheduling rules as pure functions: filters first (any failure skips the hypervisor, with the reason), then
/// a score for the survivors.
package enum PlacementRules {
    package static func evaluate(
        _ hypervisor: Scheduler_V2_HypervisorState,
        held: HeldCapacity,
        size: Scheduler_V2_Size,
        customer: String,
        policy: PlacementPolicy
    ) -> Verdict {
        let hosts = hypervisor.customers.contains(customer)
        switch assess(
            hypervisor, held: held.totals, size: size, hostsCustomer: hosts || held.customers[customer, default: 0] > 0,
            policy: policy)
        {
        case .candidate(let score, let hostsCustomer):
            return .candidate(
                Scheduler_V2_Candidate(hypervisorId: hypervisor.id, score: score, hostsCustomer: hostsCustomer))
        case .skip(let reason, let transient):
            return .skip(Scheduler_V2_Skip(hypervisorId: hypervisor.id, reason: reason.text, transient: transient))
        }
    }

    /// The rules for one hypervisor. `hostsCustomer`: it already hosts (or is about to host) one of the customer's
    /// droplets.
    @inline(__always)
    package static func assess<Hypervisor: HypervisorFacts>(
        _ hypervisor: Hypervisor,
        held: HeldTotals,
        size: Scheduler_V2_Size,
        hostsCustomer: Bool,
        policy: PlacementPolicy
    ) -> Assessment {
        // Hardware that can never hold the size: not worth waiting for.
        if hypervisor.cpus < size.vcpus {
            return .skip(.cpus(have: hypervisor.cpus, need: size.vcpus), transient: false)
        }
        if hypervisor.memoryMb < size.memoryMb + policy.memoryFloorMB {
            return .skip(
                .memory(have: hypervisor.memoryMb, need: size.memoryMb, floor: policy.memoryFloorMB), transient: false)
        }
        if hypervisor.diskGb < size.diskGb {
            return .skip(.disk(have: hypervisor.diskGb, need: size.diskGb), transient: false)
        }
        // Health and state.
        if hypervisor.recentErrors > policy.maxRecentErrors {
            return .skip(
                .errors(Int32(clamping: hypervisor.recentErrors), max: policy.maxRecentErrors), transient: true)
        }
        if hypervisor.inMaintenance {
            return .skip(.maintenance(hypervisor.maintenance), transient: true)
        }
        if hypervisor.unresponsive {
            return .skip(.unresponsive, transient: true)
        }
        if let busy = hypervisor.busyOperation(policy) {
            return .skip(.busy(busy), transient: true)
        }
        // Capacity, counting what other placements hold. Room taken by holds comes back within seconds (a hold ends
        // when its event does), so waiting for it is worth it; room taken by droplets comes back only when one is
        // deleted, so a hypervisor full of droplets is a final answer.
        let droplets = Int(hypervisor.dropletCount) + held.droplets
        if droplets >= policy.maxDroplets {
            return .skip(
                .droplets(droplets, max: policy.maxDroplets),
                transient: Int(hypervisor.dropletCount) < policy.maxDroplets)
        }
        let vcpus = UInt64(hypervisor.usedVcpus) + held.vcpus + UInt64(size.vcpus)
        let vcpuLimit = Double(hypervisor.cpus) * policy.cpuOvercommit
        if Double(vcpus) > vcpuLimit {
            return .skip(
                .overcommit(vcpus: vcpus, cpus: hypervisor.cpus, limit: policy.cpuOvercommit),
                transient: Double(vcpus - held.vcpus) <= vcpuLimit)
        }
        let memory = hypervisor.usedMemoryMb + held.memoryMB + size.memoryMb
        if memory + policy.memoryFloorMB > hypervisor.memoryMb {
            let free = hypervisor.memoryMb.subtractingClamped(
                hypervisor.usedMemoryMb + held.memoryMB + policy.memoryFloorMB)
            return .skip(
                .memoryFree(free, need: size.memoryMb),
                transient: memory - held.memoryMB + policy.memoryFloorMB <= hypervisor.memoryMb)
        }
        let disk = hypervisor.usedDiskGb + held.diskGB + size.diskGb
        if disk > hypervisor.diskGb {
            let free = hypervisor.diskGb.subtractingClamped(hypervisor.usedDiskGb + held.diskGB)
            return .skip(.diskFree(free, need: size.diskGb), transient: disk - held.diskGB <= hypervisor.diskGb)
        }
        // Rank: the capacity left after placing (the scarcest resource counts), so load spreads; a hypervisor that
        // already hosts the customer ranks lower, so a customer's droplets spread too.
        let cpuLeft = 1 - Double(vcpus) / vcpuLimit
        let memoryLeft = 1 - Double(memory + policy.memoryFloorMB) / Double(hypervisor.memoryMb)
        let diskLeft = hypervisor.diskGb == 0 ? 1 : 1 - Double(disk) / Double(hypervisor.diskGb)
        let dropletsLeft = 1 - Double(droplets + 1) / Double(policy.maxDroplets)
        let score = min(cpuLeft, memoryLeft, diskLeft, dropletsLeft) - (hostsCustomer ? policy.sameCustomerPenalty : 0)
        return .candidate(score: score, hostsCustomer: hostsCustomer)
    }

    /// The best candidate only, with no report: what a placement needs when one fits (the usual case). Same rules
    /// and the same order as `report` (highest score, ties to the lowest id, compared through `order`), without a
    /// message per hypervisor. `candidates`: the region's hypervisors with what is held on each. `hostsCustomer` is
    /// asked only of a hypervisor that could still win: hosting the customer only lowers a score.
    package static func best<Candidates: Sequence, Hypervisor: HypervisorFacts>(
        candidates: Candidates,
        request: Scheduler_V2_PlaceRequest,
        policy: PlacementPolicy,
        hostsCustomer: (Hypervisor) -> Bool
    ) -> (hypervisor: Hypervisor, score: Double, hostsCustomer: Bool)?
    where Candidates.Element == (Hypervisor, HeldTotals) {
        let size = request.size ?? Scheduler_V2_Size()
        var best: (hypervisor: Hypervisor, score: Double, hostsCustomer: Bool)?
        for (hypervisor, held) in candidates {
            guard
                case .candidate(let ceiling, _) = assess(
                    hypervisor, held: held, size: size, hostsCustomer: false, policy: policy)
            else { continue }
            if let current = best,
                current.score > ceiling || (current.score == ceiling && current.hypervisor.order < hypervisor.order)
            {
                continue
            }
            let hosts = hostsCustomer(hypervisor)
            let score = hosts ? ceiling - policy.sameCustomerPenalty : ceiling
            if let current = best,
                current.score > score || (current.score == score && current.hypervisor.order < hypervisor.order)
            {
                continue
            }
            best = (hypervisor, score, hosts)
        }
        return best
    }

    /// Evaluates every hypervisor and ranks the survivors, best first (ties by id, so the answer is deterministic).
    package static func report(
        hypervisors: [Scheduler_V2_HypervisorState],
        held: [String: HeldCapacity],
        request: Scheduler_V2_PlaceRequest,
        policy: PlacementPolicy
    ) -> Scheduler_V2_PlaceResponse {
        report(
            candidates: hypervisors.lazy.map { ($0, held[$0.id] ?? HeldCapacity()) }, request: request, policy: policy)
    }

    /// The report for `request` over hypervisors given with what reservations hold on each (those of other regions are
    /// passed over).
    package static func report(
        candidates: some Sequence<(Scheduler_V2_HypervisorState, HeldCapacity)>,
        request: Scheduler_V2_PlaceRequest,
        policy: PlacementPolicy
    ) -> Scheduler_V2_PlaceResponse {
        var response = Scheduler_V2_PlaceResponse()
        let size = request.size ?? Scheduler_V2_Size()
        for (hypervisor, held) in candidates where hypervisor.region == request.region {
            switch evaluate(hypervisor, held: held, size: size, customer: request.customer, policy: policy) {
            case .candidate(let candidate): response.ranking.append(candidate)
            case .skip(let skip): response.skipped.append(skip)
            }
        }
        response.ranking.sort { $0.score != $1.score ? $0.score > $1.score : $0.hypervisorId < $1.hypervisorId }
        response.skipped.sort { $0.hypervisorId < $1.hypervisorId }
        if let best = response.ranking.first {
            response.hypervisorId = best.hypervisorId
        } else if response.skipped.isEmpty {
            response.reason = "no hypervisor is known in region \(request.region)"
            response.retryable = true  // routers may not have reported yet
        } else {
            response.retryable = response.skipped.contains(where: \.transient)
            response.reason =
                response.retryable
                ? "no hypervisor in \(request.region) can take \(size.slug) now: \(summary(response.skipped))"
                : "no hypervisor in \(request.region) has room for \(size.slug): \(summary(response.skipped))"
        }
        return response
    }

    /// "3 is busy with create; 1 has 2 CPUs; the size needs 4"
    private static func summary(_ skips: [Scheduler_V2_Skip]) -> String {
        var counts: [String: Int] = [:]
        for skip in skips { counts[skip.reason, default: 0] += 1 }
        return counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            .prefix(4).map { "\($0.value) \($0.key)" }.joined(separator: "; ")
    }
}

extension UInt64 {
    fileprivate func subtractingClamped(_ other: UInt64) -> UInt64 { self > other ? self - other : 0 }
}

/// How many hypervisors of a region are in one state (``Fleet/hypervisorCounts()``).
package struct HypervisorCount: Sendable, Hashable {
    package var region: String
    package var state: String
    package var count: Int
}

extension PlacementRules {
    /// What a placement came to, for operators: `placed`, `retry` (refused for now: hypervisors busy, unresponsive
    /// or not yet reported) or `no_room` (refused: nothing in the region can hold the size).
    package static func outcome(_ response: Scheduler_V2_PlaceResponse) -> String {
        if !response.hypervisorId.isEmpty { return "placed" }
        return response.retryable ? "retry" : "no_room"
    }
}

/// What the rules read of a hypervisor: its reported state, or the plain numbers a fleet keeps for placements.
package protocol HypervisorFacts {
    /// Ties between equal scores go to the lowest `order`, which sorts as the hypervisor ids do.
    associatedtype Order: Comparable
    var order: Order { get }
    var cpus: UInt32 { get }
    var memoryMb: UInt64 { get }
    var diskGb: UInt64 { get }
    var usedVcpus: UInt32 { get }
    var usedMemoryMb: UInt64 { get }
    var usedDiskGb: UInt64 { get }
    var dropletCount: UInt32 { get }
    var recentErrors: UInt32 { get }
    var inMaintenance: Bool { get }
    /// What the maintenance is, for a skip reason (read only when `inMaintenance`).
    var maintenance: String { get }
    var unresponsive: Bool { get }
    /// The first operation in flight that makes it busy under `policy`, if any.
    func busyOperation(_ policy: PlacementPolicy) -> String?
}

extension Scheduler_V2_HypervisorState: HypervisorFacts {
    package var order: String { id }
    package var inMaintenance: Bool { !maintenance.isEmpty }

    package func busyOperation(_ policy: PlacementPolicy) -> String? {
        inFlight.isEmpty ? nil : inFlight.first { policy.busyOperations.contains($0) }
    }
}
