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
        var reservations: [String: Reservation] = [:]
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
                if !hypervisor.dropletIds.isEmpty { hosted[hypervisor.id] = Set(hypervisor.dropletIds) }
            }
            // A droplet the hypervisor now reports is in its usage: its reservation has done its job.
            if !hosted.isEmpty {
                state.reservations = state.reservations.filter { _, reservation in
                    !(reservation.dropletId != 0 && hosted[reservation.hypervisorId]?.contains(reservation.dropletId) == true)
                }
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

    /// Capacity held per hypervisor by unexpired reservations.
    private static func held(_ state: inout State, now: ContinuousClock.Instant) -> [String: HeldCapacity] {
        state.reservations = state.reservations.filter { $0.value.expires > now }
        var held: [String: HeldCapacity] = [:]
        for reservation in state.reservations.values {
            held[reservation.hypervisorId, default: HeldCapacity()].add(reservation.size, customer: reservation.customer)
        }
        return held
    }

    /// The placement report, without placing.
    package func explain(_ request: Scheduler_V2_PlaceRequest) -> Scheduler_V2_PlaceResponse {
        state.withLock { state in
            let held = Self.held(&state, now: .now)
            return PlacementRules.report(hypervisors: Array(state.hypervisors.values), held: held, request: request, policy: policy)
        }
    }

    /// Picks a hypervisor and reserves the size on it. Placing an event that already holds a reservation returns
    /// that hypervisor again (the caller may retry). A successful placement carries only the chosen candidate;
    /// when nothing fits, the response has every skip and its reason.
    package func place(_ request: Scheduler_V2_PlaceRequest) -> Scheduler_V2_PlaceResponse {
        state.withLock { state in
            let now = ContinuousClock.now
            let held = Self.held(&state, now: now)
            if !request.eventId.isEmpty, let existing = state.reservations[request.eventId] {
                return Scheduler_V2_PlaceResponse(hypervisorId: existing.hypervisorId)
            }
            var response = PlacementRules.report(hypervisors: Array(state.hypervisors.values), held: held, request: request, policy: policy)
            if !response.hypervisorId.isEmpty {
                // A placement answers with the choice; the full report (every skip, every candidate) is Explain's.
                response.ranking.removeSubrange(min(1, response.ranking.count)...)
                response.skipped = []
                let key = request.eventId.isEmpty ? "anonymous-\(state.reservations.count)-\(now)" : request.eventId
                state.reservations[key] = Reservation(
                    hypervisorId: response.hypervisorId, size: request.size ?? Scheduler_V2_Size(),
                    customer: request.customer, dropletId: request.dropletId, expires: now.advanced(by: reservationTTL)
                )
            }
            return response
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
            state.reservations[eventId] = nil
            return true
        }
    }

    package var reservationCount: Int { state.withLock { $0.reservations.count } }
}
