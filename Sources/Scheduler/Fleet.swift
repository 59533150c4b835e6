internal import Synchronization
package import SchedulerAPI

/// The scheduler's view of the fleet and the capacity its placements hold.
///
/// Placements are serialised by one lock around evaluate-and-reserve, so concurrent placements never count the same
/// free capacity twice: a hypervisor is never oversubscribed. A reservation lasts until its event is released or
/// until `reservationTTL` passes (an event whose outcome never comes back must not hold capacity forever).
package final class Fleet: Sendable {
    private struct Reservation {
        var hypervisorId: String
        var size: Scheduler_V2_Size
        var customer: String
        var dropletId: Int64
        var expires: ContinuousClock.Instant
    }

    private struct State {
        var hypervisors: [String: Scheduler_V2_HypervisorState] = [:]
        /// Each hypervisor's customers as a set (its report carries a list), for the spread rule.
        var customers: [String: Set<String>] = [:]
        var reservations: [String: Reservation] = [:]
        /// What the reservations hold, per hypervisor: kept up to date as they come and go, not recounted per
        /// placement.
        var held: [String: HeldCapacity] = [:]
        /// The earliest expiry among the reservations, so expired ones are looked for only when one is due.
        var nextExpiry: ContinuousClock.Instant?

        mutating func hold(_ key: String, _ reservation: Reservation) {
            drop(key)
            reservations[key] = reservation
            held[reservation.hypervisorId, default: HeldCapacity()].add(reservation.size, customer: reservation.customer)
            nextExpiry = min(nextExpiry ?? reservation.expires, reservation.expires)
        }

        mutating func drop(_ key: String) {
            guard let reservation = reservations.removeValue(forKey: key) else { return }
            held[reservation.hypervisorId]?.remove(reservation.size, customer: reservation.customer)
            if held[reservation.hypervisorId]?.isEmpty == true { held[reservation.hypervisorId] = nil }
        }

        mutating func expire(now: ContinuousClock.Instant) {
            guard let next = nextExpiry, next <= now else { return }
            for (key, reservation) in reservations where reservation.expires <= now { drop(key) }
            nextExpiry = reservations.values.lazy.map(\.expires).min()
        }
    }

    private let state = Mutex(State())
    package let policy: PlacementPolicy
    package let reservationTTL: Duration

    package init(policy: PlacementPolicy = PlacementPolicy(), reservationTTL: Duration = .seconds(300)) {
        self.policy = policy
        self.reservationTTL = reservationTTL
    }

    /// Records the latest state of each hypervisor in the batch; returns how many hypervisors are known.
    @discardableResult
    package func report(_ hypervisors: [Scheduler_V2_HypervisorState]) -> Int {
        state.withLock { state in
            var hosted: [String: Set<Int64>] = [:]
            for hypervisor in hypervisors where !hypervisor.id.isEmpty {
                state.hypervisors[hypervisor.id] = hypervisor
                state.customers[hypervisor.id] = Set(hypervisor.customers)
                if !hypervisor.dropletIds.isEmpty { hosted[hypervisor.id] = Set(hypervisor.dropletIds) }
            }
            // A droplet the hypervisor now reports is in its usage: its reservation has done its job.
            if !hosted.isEmpty {
                let done = state.reservations.compactMap { key, reservation in
                    reservation.dropletId != 0 && hosted[reservation.hypervisorId]?.contains(reservation.dropletId) == true ? key : nil
                }
                for key in done { state.drop(key) }
            }
            return state.hypervisors.count
        }
    }

    package func markUnresponsive(_ ids: [String]) {
        state.withLock { state in
            for id in ids { state.hypervisors[id]?.unresponsive = true }
        }
    }

    package func hypervisor(_ id: String) -> Scheduler_V2_HypervisorState? {
        state.withLock { $0.hypervisors[id] }
    }

    /// The placement report, without placing.
    package func explain(_ request: Scheduler_V2_PlaceRequest) -> Scheduler_V2_PlaceResponse {
        state.withLock { state in
            state.expire(now: .now)
            return PlacementRules.report(hypervisors: Array(state.hypervisors.values), held: state.held, request: request, policy: policy)
        }
    }

    /// Picks a hypervisor and reserves the size on it. Placing an event that already holds a reservation returns
    /// that hypervisor again (the caller may retry). A successful placement carries only the chosen candidate;
    /// when nothing fits, the response has every skip and its reason.
    package func place(_ request: Scheduler_V2_PlaceRequest) -> Scheduler_V2_PlaceResponse {
        state.withLock { state in
            let now = ContinuousClock.now
            state.expire(now: now)
            if !request.eventId.isEmpty, let existing = state.reservations[request.eventId] {
                return Scheduler_V2_PlaceResponse(hypervisorId: existing.hypervisorId)
            }
            let customers = state.customers
            let best = PlacementRules.best(
                hypervisors: state.hypervisors.values, held: state.held, request: request, policy: policy,
                hostsCustomer: { customers[$0.id]?.contains(request.customer) == true }
            )
            guard let best else {
                // Nothing fits: the full report says why, hypervisor by hypervisor.
                return PlacementRules.report(hypervisors: Array(state.hypervisors.values), held: state.held, request: request, policy: policy)
            }
            let hostsCustomer = customers[best.id]?.contains(request.customer) == true
                || state.held[best.id]?.customers[request.customer, default: 0] ?? 0 > 0
            let key = request.eventId.isEmpty ? "anonymous-\(state.reservations.count)-\(now)" : request.eventId
            state.hold(key, Reservation(
                hypervisorId: best.id, size: request.size ?? Scheduler_V2_Size(),
                customer: request.customer, dropletId: request.dropletId, expires: now.advanced(by: reservationTTL)
            ))
            return Scheduler_V2_PlaceResponse(
                hypervisorId: best.id, ranking: [Scheduler_V2_Candidate(hypervisorId: best.id, score: best.score, hostsCustomer: hostsCustomer)]
            )
        }
    }

    /// Ends an event's reservation; `false` if it held none. For a completed create whose droplet the hypervisor has
    /// not reported yet, the room stays held until it does (or the reservation expires): released earlier, the
    /// droplet would be counted neither in the hypervisor's usage nor here, and the room could be given twice.
    @discardableResult
    package func release(eventId: String, completed: Bool = false) -> Bool {
        state.withLock { state in
            guard let reservation = state.reservations[eventId] else { return false }
            if completed, reservation.dropletId != 0,
               state.hypervisors[reservation.hypervisorId]?.dropletIds.contains(reservation.dropletId) != true {
                return true
            }
            state.drop(eventId)
            return true
        }
    }

    package var reservationCount: Int { state.withLock { $0.reservations.count } }
}
