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

    /// One hypervisor as placements read it: its latest state, its customers as a set (its report carries a list),
    /// and what reservations hold on it — together, so a placement reads each hypervisor with no lookups.
    private struct Entry {
        var state: Scheduler_V2_HypervisorState
        var summary: HypervisorSummary
        var customers: Set<String>
        var held = HeldCapacity()

        init(_ state: Scheduler_V2_HypervisorState, policy: PlacementPolicy, held: HeldCapacity = HeldCapacity()) {
            self.state = state
            summary = HypervisorSummary(state, policy: policy)
            customers = Set(state.customers)
            self.held = held
        }

        mutating func markUnresponsive(policy: PlacementPolicy) {
            state.unresponsive = true
            summary.unresponsive = true
        }
    }

    private struct State {
        /// Region → hypervisor id → entry: a placement walks its region only.
        var regions: [String: [String: Entry]] = [:]
        /// Hypervisor id → region.
        var regionOf: [String: String] = [:]
        var reservations: [String: Reservation] = [:]
        /// The earliest expiry among the reservations, so expired ones are looked for only when one is due.
        var nextExpiry: ContinuousClock.Instant?

        var count: Int { regionOf.count }

        func hypervisor(_ id: String) -> Scheduler_V2_HypervisorState? {
            regionOf[id].flatMap { regions[$0]?[id]?.state }
        }

        mutating func update(_ id: String, _ body: (inout Entry) -> Void) {
            guard let region = regionOf[id] else { return }
            regions[region]?[id].modifyInPlace(body)
        }

        mutating func record(_ hypervisor: Scheduler_V2_HypervisorState, policy: PlacementPolicy) {
            // A hypervisor that moved region (reconfigured) takes its holds with it.
            let previous = regionOf[hypervisor.id] ?? hypervisor.region
            let held = regions[previous]?.removeValue(forKey: hypervisor.id)?.held ?? HeldCapacity()
            regions[hypervisor.region, default: [:]][hypervisor.id] = Entry(hypervisor, policy: policy, held: held)
            regionOf[hypervisor.id] = hypervisor.region
        }

        /// What reservations hold, per hypervisor (for the full report).
        var held: [String: HeldCapacity] {
            var held: [String: HeldCapacity] = [:]
            for entries in regions.values {
                for (id, entry) in entries where !entry.held.isEmpty { held[id] = entry.held }
            }
            return held
        }

        var allHypervisors: [Scheduler_V2_HypervisorState] { regions.values.flatMap { $0.values.map(\.state) } }

        mutating func hold(_ key: String, _ reservation: Reservation) {
            drop(key)
            reservations[key] = reservation
            update(reservation.hypervisorId) { $0.held.add(reservation.size, customer: reservation.customer) }
            nextExpiry = min(nextExpiry ?? reservation.expires, reservation.expires)
        }

        mutating func drop(_ key: String) {
            guard let reservation = reservations.removeValue(forKey: key) else { return }
            update(reservation.hypervisorId) { $0.held.remove(reservation.size, customer: reservation.customer) }
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
                state.record(hypervisor, policy: policy)
                if !hypervisor.dropletIds.isEmpty { hosted[hypervisor.id] = Set(hypervisor.dropletIds) }
            }
            // A droplet the hypervisor now reports is in its usage: its reservation has done its job.
            if !hosted.isEmpty {
                let done = state.reservations.compactMap { key, reservation in
                    reservation.dropletId != 0 && hosted[reservation.hypervisorId]?.contains(reservation.dropletId) == true ? key : nil
                }
                for key in done { state.drop(key) }
            }
            return state.count
        }
    }

    package func markUnresponsive(_ ids: [String]) {
        state.withLock { state in
            for id in ids { state.update(id) { $0.markUnresponsive(policy: policy) } }
        }
    }

    package func hypervisor(_ id: String) -> Scheduler_V2_HypervisorState? {
        state.withLock { $0.hypervisor(id) }
    }

    /// The placement report, without placing.
    package func explain(_ request: Scheduler_V2_PlaceRequest) -> Scheduler_V2_PlaceResponse {
        state.withLock { state in
            state.expire(now: .now)
            return PlacementRules.report(hypervisors: state.allHypervisors, held: state.held, request: request, policy: policy)
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
            let best = Self.best(in: state, for: request, policy: policy)
            guard let best else {
                // Nothing fits: the full report says why, hypervisor by hypervisor.
                return PlacementRules.report(hypervisors: state.allHypervisors, held: state.held, request: request, policy: policy)
            }
            let key = request.eventId.isEmpty ? "anonymous-\(state.reservations.count)-\(now)" : request.eventId
            state.hold(key, Reservation(
                hypervisorId: best.id, size: request.size ?? Scheduler_V2_Size(),
                customer: request.customer, dropletId: request.dropletId, expires: now.advanced(by: reservationTTL)
            ))
            return Scheduler_V2_PlaceResponse(
                hypervisorId: best.id, ranking: [Scheduler_V2_Candidate(hypervisorId: best.id, score: best.score, hostsCustomer: best.hostsCustomer)]
            )
        }
    }

    /// The best candidate of the request's region. A function of its own so that its reference to the region's
    /// entries ends before the caller holds capacity: were it still alive, that write would copy every entry of the
    /// region (a copy on write), for each placement.
    private static func best(
        in state: borrowing State, for request: Scheduler_V2_PlaceRequest, policy: PlacementPolicy
    ) -> (id: String, score: Double, hostsCustomer: Bool)? {
        guard let region = state.regions[request.region] else { return nil }
        let customer = request.customer
        return PlacementRules.best(
            candidates: region.values.lazy.map { ($0.summary, $0.held) }, request: request, policy: policy,
            hostsCustomer: { hypervisor, held in
                held.customers[customer, default: 0] > 0 || region[hypervisor.id]?.customers.contains(customer) == true
            }
        )
    }

    /// Ends an event's reservation; `false` if it held none. For a completed create whose droplet the hypervisor has
    /// not reported yet, the room stays held until it does (or the reservation expires): released earlier, the
    /// droplet would be counted neither in the hypervisor's usage nor here, and the room could be given twice.
    @discardableResult
    package func release(eventId: String, completed: Bool = false) -> Bool {
        state.withLock { state in
            guard let reservation = state.reservations[eventId] else { return false }
            if completed, reservation.dropletId != 0,
               state.hypervisor(reservation.hypervisorId)?.dropletIds.contains(reservation.dropletId) != true {
                return true
            }
            state.drop(eventId)
            return true
        }
    }

    package var reservationCount: Int { state.withLock { $0.reservations.count } }
}

extension Optional {
    /// Runs `body` on the wrapped value in place: the optional lets go of it first, so the value is uniquely
    /// referenced and its collections are not copied on write.
    fileprivate mutating func modifyInPlace(_ body: (inout Wrapped) -> Void) {
        guard case .some(var value) = self else { return }
        self = nil
        body(&value)
        self = value
    }
}
