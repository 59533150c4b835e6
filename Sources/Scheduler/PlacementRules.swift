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

/// Capacity held by placements whose events have not finished yet.
package struct HeldCapacity: Sendable, Hashable {
    package var vcpus: UInt64 = 0
    package var memoryMB: UInt64 = 0
    package var diskGB: UInt64 = 0
    package var droplets = 0
    package var customers: Set<String> = []

    package init() {}

    package mutating func add(_ size: Scheduler_V2_Size, customer: String) {
        vcpus += UInt64(size.vcpus)
        memoryMB += size.memoryMb
        diskGB += size.diskGb
        droplets += 1
        customers.insert(customer)
    }
}

/// The verdict on one hypervisor for one placement.
package enum Verdict: Sendable, Hashable {
    case candidate(Scheduler_V2_Candidate)
    case skip(Scheduler_V2_Skip)
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
        func skip(_ reason: String, transient: Bool) -> Verdict {
            .skip(Scheduler_V2_Skip(hypervisorId: hypervisor.id, reason: reason, transient: transient))
        }
        // Hardware that can never hold the size: not worth waiting for.
        if hypervisor.cpus < size.vcpus {
            return skip("has \(hypervisor.cpus) CPUs; the size needs \(size.vcpus)", transient: false)
        }
        if hypervisor.memoryMb < size.memoryMb + policy.memoryFloorMB {
            return skip("has \(hypervisor.memoryMb) MB of memory; the size needs \(size.memoryMb) MB above a \(policy.memoryFloorMB) MB floor", transient: false)
        }
        if hypervisor.diskGb < size.diskGb {
            return skip("has \(hypervisor.diskGb) GB of disk; the size needs \(size.diskGb) GB", transient: false)
        }
        // Health and state.
        if hypervisor.recentErrors > policy.maxRecentErrors {
            return skip("has \(hypervisor.recentErrors) recent errors (more than \(policy.maxRecentErrors))", transient: true)
        }
        if !hypervisor.maintenance.isEmpty {
            return skip("is in maintenance: \(hypervisor.maintenance)", transient: true)
        }
        if hypervisor.unresponsive {
            return skip("is unresponsive", transient: true)
        }
        if let busy = hypervisor.inFlight.first(where: { policy.busyOperations.contains($0) }) {
            return skip("is busy with \(busy)", transient: true)
        }
        // Capacity, counting what other placements hold. Room taken by holds comes back within seconds (a hold ends
        // when its event does), so waiting for it is worth it; room taken by droplets comes back only when one is
        // deleted, so a hypervisor full of droplets is a final answer.
        let droplets = Int(hypervisor.dropletCount) + held.droplets
        if droplets >= policy.maxDroplets {
            return skip("hosts \(droplets) droplets (at most \(policy.maxDroplets))", transient: Int(hypervisor.dropletCount) < policy.maxDroplets)
        }
        let vcpus = UInt64(hypervisor.usedVcpus) + held.vcpus + UInt64(size.vcpus)
        let vcpuLimit = Double(hypervisor.cpus) * policy.cpuOvercommit
        if Double(vcpus) > vcpuLimit {
            return skip("would run \(vcpus) vCPUs on \(hypervisor.cpus) CPUs (overcommit at most \(policy.cpuOvercommit))", transient: Double(vcpus - held.vcpus) <= vcpuLimit)
        }
        let memory = hypervisor.usedMemoryMb + held.memoryMB + size.memoryMb
        if memory + policy.memoryFloorMB > hypervisor.memoryMb {
            let free = hypervisor.memoryMb.subtractingClamped(hypervisor.usedMemoryMb + held.memoryMB + policy.memoryFloorMB)
            return skip("has \(free) MB of memory free above the floor; the size needs \(size.memoryMb) MB", transient: memory - held.memoryMB + policy.memoryFloorMB <= hypervisor.memoryMb)
        }
        let disk = hypervisor.usedDiskGb + held.diskGB + size.diskGb
        if disk > hypervisor.diskGb {
            let free = hypervisor.diskGb.subtractingClamped(hypervisor.usedDiskGb + held.diskGB)
            return skip("has \(free) GB of disk free; the size needs \(size.diskGb) GB", transient: disk - held.diskGB <= hypervisor.diskGb)
        }
        // Rank: the capacity left after placing (the scarcest resource counts), so load spreads; a hypervisor that
        // already hosts the customer ranks lower, so a customer's droplets spread too.
        let cpuLeft = 1 - Double(vcpus) / vcpuLimit
        let memoryLeft = 1 - Double(memory + policy.memoryFloorMB) / Double(hypervisor.memoryMb)
        let diskLeft = hypervisor.diskGb == 0 ? 1 : 1 - Double(disk) / Double(hypervisor.diskGb)
        let dropletsLeft = 1 - Double(droplets + 1) / Double(policy.maxDroplets)
        let hostsCustomer = hypervisor.customers.contains(customer) || held.customers.contains(customer)
        let score = min(cpuLeft, memoryLeft, diskLeft, dropletsLeft) - (hostsCustomer ? policy.sameCustomerPenalty : 0)
        return .candidate(Scheduler_V2_Candidate(hypervisorId: hypervisor.id, score: score, hostsCustomer: hostsCustomer))
    }

    /// Evaluates every hypervisor and ranks the survivors, best first (ties by id, so the answer is deterministic).
    package static func report(
        hypervisors: [Scheduler_V2_HypervisorState],
        held: [String: HeldCapacity],
        request: Scheduler_V2_PlaceRequest,
        policy: PlacementPolicy
    ) -> Scheduler_V2_PlaceResponse {
        var response = Scheduler_V2_PlaceResponse()
        let size = request.size ?? Scheduler_V2_Size()
        for hypervisor in hypervisors where hypervisor.region == request.region {
            switch evaluate(hypervisor, held: held[hypervisor.id] ?? HeldCapacity(), size: size, customer: request.customer, policy: policy) {
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
            response.reason = response.retryable
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
