package import SchedulerAPI
internal import Synchronization

/// A placement whose event has not finished: capacity a scheduler that starts must hold before it places anything.
package struct HeldPlacement: Sendable, Hashable {
    package var eventId: String
    package var hypervisorId: String
    package var region: String
    package var customer: String
    package var dropletId: Int64
    package var size: Scheduler_V2_Size

    package init(
        eventId: String, hypervisorId: String, region: String, customer: String, dropletId: Int64,
        size: Scheduler_V2_Size
    ) {
        self.eventId = eventId
        self.hypervisorId = hypervisorId
        self.region = region
        self.customer = customer
        self.dropletId = dropletId
        self.size = size
    }
}

/// How a fleet starts.
package enum FleetStartup: Sendable, Hashable {
    /// Nothing can be in flight: it places at once (a fleet made for a test or a tool).
    case empty
    /// A scheduler process that starts, or restarts, while creations may be under way. Before it places anything in a
    /// region it needs both halves of the truth: the placements still in flight (``Fleet/restore(_:)``, from Harpoon)
    /// and a complete report of the region's hypervisors from one of its routers (what the agents run and host).
    /// Until then a placement is refused as retryable.
    case recovering
}

/// The scheduler's view of the fleet and the capacity its placements hold.
///
/// Placements are serialised by one lock around evaluate-and-reserve, so concurrent placements never count the same
/// free capacity twice: a hypervisor is never oversubscribed. A reservation lasts until its event is released, until
/// its hypervisor reports hosting the droplet (agents count a droplet from the moment they accept its create), or
/// until `reservationTTL` passes (an event whose outcome never comes back must not hold capacity forever).
///
/// A fleet that starts ``FleetStartup/recovering`` places nothing in a region until it has loaded the placements in
/// flight and heard a complete report from the region: a restarted scheduler must not see hypervisors as empty
/// whose room its predecessor gave away.
package final class Fleet: Sendable {
    private struct Reservation {
        var hypervisorId: String
        var size: Scheduler_V2_Size
        var customer: String
        var dropletId: Int64
        var expires: ContinuousClock.Instant
    }

    /// One hypervisor as the fleet keeps it: its latest state, its customers as a set (its report carries a list), and
    /// what reservations hold on it.
    private struct Entry {
        var state: Scheduler_V2_HypervisorState
        var customers: Set<String>
        var held = HeldCapacity()

        init(_ state: Scheduler_V2_HypervisorState, held: HeldCapacity = HeldCapacity()) {
            self.state = state
            customers = Set(state.customers)
            self.held = held
        }
    }

    /// What a placement reads of one hypervisor, as plain numbers, so that the scan of a region copies and compares
    /// without reference counting. Its skip reasons carry no text: only ``PlacementRules/best`` reads slots, and it
    /// keeps no reasons (the report reads the full state).
    private struct Slot: HypervisorFacts {
        /// The hypervisor's place among the region's ids in sorted order (ties go to the lowest id).
        var order: Int32 = 0
        /// Where its entry is in the region.
        var index: Int32
        var cpus: UInt32
        var memoryMb: UInt64
        var diskGb: UInt64
        var usedVcpus: UInt32
        var usedMemoryMb: UInt64
        var usedDiskGb: UInt64
        var dropletCount: UInt32
        var recentErrors: UInt32
        var inMaintenance: Bool
        var unresponsive: Bool
        var busy: Bool
        var held: HeldTotals

        init(_ entry: Entry, index: Int, order: Int32, policy: PlacementPolicy) {
            let state = entry.state
            self.order = order
            self.index = Int32(index)
            cpus = state.cpus
            memoryMb = state.memoryMb
            diskGb = state.diskGb
            usedVcpus = state.usedVcpus
            usedMemoryMb = state.usedMemoryMb
            usedDiskGb = state.usedDiskGb
            dropletCount = state.dropletCount
            recentErrors = state.recentErrors
            inMaintenance = state.inMaintenance
            unresponsive = state.unresponsive
            busy = state.busyOperation(policy) != nil
            held = entry.held.totals
        }

        var maintenance: String { "" }
        func busyOperation(_ policy: PlacementPolicy) -> String? { busy ? "" : nil }
    }

    /// A region's hypervisors: entries and their slots side by side, in one order, plus an index by id, and for each
    /// customer a bit per position saying which hypervisors host one of its droplets or hold room for one.
    private struct Region {
        var entries: [Entry] = []
        var slots: [Slot] = []
        var index: [String: Int] = [:]
        /// Customer → a bit per position: a placement asks "does it host the customer?" with a bit test, not two
        /// string-hashed lookups per hypervisor.
        var hosting: [String: [UInt64]] = [:]
        /// A hypervisor joined or left: the slots' `order` is recomputed before the next placement.
        var ordersStale = false

        /// The customers a hypervisor hosts or holds room for.
        private static func customers(of entry: Entry) -> Set<String> {
            entry.customers.union(entry.held.customers.keys)
        }

        private mutating func mark(_ position: Int, from old: Set<String>, to new: Set<String>) {
            for customer in old.subtracting(new) { mark(position, customer, false) }
            for customer in new.subtracting(old) { mark(position, customer, true) }
        }

        private mutating func mark(_ position: Int, _ customer: String, _ hosts: Bool) {
            if hosts {
                hosting[customer, default: []].set(position, true)
            } else {
                hosting[customer]?.set(position, false)
            }
        }

        /// Adds or replaces a hypervisor's entry.
        mutating func put(_ entry: Entry, policy: PlacementPolicy) {
            if let position = index[entry.state.id] {
                let old = Self.customers(of: entries[position])
                entries[position] = entry
                slots[position] = Slot(entry, index: position, order: slots[position].order, policy: policy)
                mark(position, from: old, to: Self.customers(of: entry))
            } else {
                index[entry.state.id] = entries.count
                slots.append(Slot(entry, index: entries.count, order: 0, policy: policy))
                entries.append(entry)
                mark(entries.count - 1, from: [], to: Self.customers(of: entry))
                ordersStale = true
            }
        }

        /// Removes a hypervisor's entry (the last one takes its place), returning it.
        mutating func remove(_ id: String) -> Entry? {
            guard let position = index.removeValue(forKey: id) else { return nil }
            let removed = entries[position]
            mark(position, from: Self.customers(of: removed), to: [])
            let last = entries.count - 1
            if position != last {
                let moved = Self.customers(of: entries[last])
                mark(last, from: moved, to: [])
                mark(position, from: [], to: moved)
                entries[position] = entries[last]
                slots[position] = slots[last]
                slots[position].index = Int32(position)
                index[entries[position].state.id] = position
            }
            entries.removeLast()
            slots.removeLast()
            ordersStale = true
            return removed
        }

        /// Changes an entry's holds or health; its reported customers change only with a report (`put`).
        mutating func update(at position: Int, policy: PlacementPolicy, _ body: (inout Entry) -> Void) {
            let heldBefore = Set(entries[position].held.customers.keys)
            body(&entries[position])
            slots[position] = Slot(entries[position], index: position, order: slots[position].order, policy: policy)
            // Only a customer whose holds here began or ended can change its bit, unless the hypervisor hosts it anyway.
            let heldAfter = Set(entries[position].held.customers.keys)
            for customer in heldBefore.symmetricDifference(heldAfter)
            where !entries[position].customers.contains(customer) {
                mark(position, customer, heldAfter.contains(customer))
            }
        }

        mutating func refreshOrders() {
            guard ordersStale else { return }
            let sorted = entries.indices.sorted { entries[$0].state.id < entries[$1].state.id }
            for (order, position) in sorted.enumerated() { slots[position].order = Int32(order) }
            ordersStale = false
        }
    }

    private struct State {
        /// Region → its hypervisors: a placement walks its region only.
        var regions: [String: Region] = [:]
        /// Hypervisor id → region.
        var regionOf: [String: String] = [:]
        var reservations: [String: Reservation] = [:]
        /// What reservations hold on hypervisors no router has reported yet (restored placements): the hypervisor's
        /// entry takes it when it first appears.
        var heldOnUnknown: [String: HeldCapacity] = [:]
        /// The earliest expiry among the reservations, so expired ones are looked for only when one is due.
        var nextExpiry: ContinuousClock.Instant?
        /// Whether the placements in flight are loaded (always, for a fleet that starts empty).
        var inFlightLoaded: Bool
        /// Regions a router has reported completely since the start.
        var completeRegions: Set<String> = []
        /// Events released before the placements in flight were loaded: the load must not hold room for them again.
        var releasedWhileLoading: Set<String> = []

        init(loaded: Bool) { inFlightLoaded = loaded }

        /// Why a placement in `region` must wait, if it must.
        func notReady(_ region: String, startup: FleetStartup) -> String? {
            guard startup == .recovering else { return nil }
            if !inFlightLoaded {
                return "the scheduler is starting: it has not loaded the placements in flight yet"
            }
            if !completeRegions.contains(region) {
                return "the scheduler is starting: no router of \(region) has reported all of its hypervisors yet"
            }
            return nil
        }

        var count: Int { regionOf.count }

        func hypervisor(_ id: String) -> Scheduler_V2_HypervisorState? {
            guard let region = regionOf[id].flatMap({ regions[$0] }), let position = region.index[id] else {
                return nil
            }
            return region.entries[position].state
        }

        mutating func update(_ id: String, policy: PlacementPolicy, _ body: (inout Entry) -> Void) {
            guard let name = regionOf[id], let position = regions[name]?.index[id] else { return }
            regions[name]?.update(at: position, policy: policy, body)
        }

        /// Changes what is held on a hypervisor, known or not yet reported.
        mutating func updateHeld(_ id: String, policy: PlacementPolicy, _ body: (inout HeldCapacity) -> Void) {
            if regionOf[id] != nil {
                update(id, policy: policy) { body(&$0.held) }
            } else {
                body(&heldOnUnknown[id, default: HeldCapacity()])
                if heldOnUnknown[id]?.isEmpty == true { heldOnUnknown[id] = nil }
            }
        }

        mutating func record(_ hypervisor: Scheduler_V2_HypervisorState, policy: PlacementPolicy) {
            // A hypervisor that moved region (reconfigured) takes its holds with it; one seen for the first time takes
            // what restored placements hold on it.
            var held = HeldCapacity()
            if let previous = regionOf[hypervisor.id], previous != hypervisor.region {
                held = regions[previous]?.remove(hypervisor.id)?.held ?? held
            } else if let region = regions[hypervisor.region], let position = region.index[hypervisor.id] {
                held = region.entries[position].held
            } else if let waiting = heldOnUnknown.removeValue(forKey: hypervisor.id) {
                held = waiting
            }
            regions[hypervisor.region, default: Region()].put(Entry(hypervisor, held: held), policy: policy)
            regionOf[hypervisor.id] = hypervisor.region
        }

        /// What reservations hold, per hypervisor (for the full report).
        var held: [String: HeldCapacity] {
            var held: [String: HeldCapacity] = [:]
            for region in regions.values {
                for entry in region.entries where !entry.held.isEmpty { held[entry.state.id] = entry.held }
            }
            return held
        }

        var allHypervisors: [Scheduler_V2_HypervisorState] { regions.values.flatMap { $0.entries.map(\.state) } }

        mutating func hold(_ key: String, _ reservation: Reservation, policy: PlacementPolicy) {
            drop(key, policy: policy)
            reservations[key] = reservation
            updateHeld(reservation.hypervisorId, policy: policy) {
                $0.add(reservation.size, customer: reservation.customer)
            }
            nextExpiry = min(nextExpiry ?? reservation.expires, reservation.expires)
        }

        mutating func drop(_ key: String, policy: PlacementPolicy) {
            guard let reservation = reservations.removeValue(forKey: key) else { return }
            updateHeld(reservation.hypervisorId, policy: policy) {
                $0.remove(reservation.size, customer: reservation.customer)
            }
        }

        mutating func expire(now: ContinuousClock.Instant, policy: PlacementPolicy) {
            guard let next = nextExpiry, next <= now else { return }
            for (key, reservation) in reservations where reservation.expires <= now { drop(key, policy: policy) }
            nextExpiry = reservations.values.lazy.map(\.expires).min()
        }
    }

    private let state: Mutex<State>
    package let policy: PlacementPolicy
    package let reservationTTL: Duration
    package let startup: FleetStartup

    /// The time reservations are held from and expire at: the monotonic clock in production, one a test advances.
    private let now: @Sendable () -> ContinuousClock.Instant

    package init(
        policy: PlacementPolicy = PlacementPolicy(), reservationTTL: Duration = .seconds(300),
        startup: FleetStartup = .empty,
        now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
    ) {
        self.now = now
        self.policy = policy
        self.reservationTTL = reservationTTL
        self.startup = startup
        state = Mutex(State(loaded: startup == .empty))
    }

    /// Records the latest state of each hypervisor in the batch; returns how many hypervisors are known.
    @discardableResult
    package func report(_ hypervisors: [Scheduler_V2_HypervisorState]) -> Int {
        report(hypervisors, region: "", complete: false).known
    }

    /// Records a router's batch. `complete`: the batch holds every hypervisor the router of `region` serves. Returns
    /// how many hypervisors are known, and whether the fleet still waits for a complete report of `region`.
    @discardableResult
    package func report(
        _ hypervisors: [Scheduler_V2_HypervisorState], region: String, complete: Bool
    ) -> (known: Int, needsComplete: Bool) {
        state.withLock { state in
            var hosted: [String: Set<Int64>] = [:]
            for hypervisor in hypervisors where !hypervisor.id.isEmpty {
                state.record(hypervisor, policy: policy)
                if !hypervisor.dropletIds.isEmpty { hosted[hypervisor.id] = Set(hypervisor.dropletIds) }
            }
            // A droplet the hypervisor now reports is in its usage: its reservation has done its job.
            if !hosted.isEmpty {
                let done = state.reservations.compactMap { key, reservation in
                    reservation.dropletId != 0
                        && hosted[reservation.hypervisorId]?.contains(reservation.dropletId) == true ? key : nil
                }
                for key in done { state.drop(key, policy: policy) }
            }
            let region = region.isEmpty ? hypervisors.first?.region ?? "" : region
            if complete, !region.isEmpty { state.completeRegions.insert(region) }
            let needsComplete = startup == .recovering && !region.isEmpty && !state.completeRegions.contains(region)
            return (state.count, needsComplete)
        }
    }

    /// Holds the room of the placements still in flight, as Harpoon lists them when the scheduler starts, and lets
    /// placements begin (in each region a router has reported completely). A placement whose hypervisor already
    /// reports its droplet is in that hypervisor's usage and needs no hold; one whose event was released meanwhile is
    /// finished. Holding an event twice holds it once.
    package func restore(_ placements: [HeldPlacement]) {
        state.withLock { state in
            let now = self.now()
            for placement in placements where !placement.eventId.isEmpty && !placement.hypervisorId.isEmpty {
                guard state.reservations[placement.eventId] == nil,
                    !state.releasedWhileLoading.contains(placement.eventId)
                else { continue }
                if placement.dropletId != 0,
                    state.hypervisor(placement.hypervisorId)?.dropletIds.contains(placement.dropletId) == true
                {
                    continue
                }
                state.hold(
                    placement.eventId,
                    Reservation(
                        hypervisorId: placement.hypervisorId, size: placement.size, customer: placement.customer,
                        dropletId: placement.dropletId, expires: now.advanced(by: reservationTTL)
                    ), policy: policy)
            }
            state.inFlightLoaded = true
            state.releasedWhileLoading = []
        }
    }

    /// Whether the placements in flight are loaded (a fleet that starts empty has none to load).
    package var inFlightLoaded: Bool { state.withLock { $0.inFlightLoaded } }

    /// Why a placement in `region` would be refused now because the fleet is still starting; `nil` once it is not.
    package func startingReason(region: String) -> String? {
        state.withLock { $0.notReady(region, startup: startup) }
    }

    /// Marks hypervisors unresponsive, as `router` saw them go. A hypervisor that reports through another router
    /// now is left as it is: its agent moved, and the old router's word comes late.
    package func markUnresponsive(_ ids: [String], router: String = "") {
        state.withLock { state in
            for id in ids {
                state.update(id, policy: policy) { entry in
                    guard router.isEmpty || entry.state.router.isEmpty || entry.state.router == router else { return }
                    entry.state.unresponsive = true
                }
            }
        }
    }

    /// How many hypervisors each region has in each state: `unresponsive` (its agent is not heard from), `maintenance`
    /// (drained), or `ready`.
    package func hypervisorCounts() -> [HypervisorCount] {
        state.withLock { state in
            var counts: [HypervisorCount] = []
            for (region, hypervisors) in state.regions.sorted(by: { $0.key < $1.key }) {
                var byState: [String: Int] = ["ready": 0, "maintenance": 0, "unresponsive": 0]
                for slot in hypervisors.slots {
                    byState[
                        slot.unresponsive ? "unresponsive" : slot.inMaintenance ? "maintenance" : "ready", default: 0] +=
                        1
                }
                for (name, count) in byState.sorted(by: { $0.key < $1.key }) {
                    counts.append(HypervisorCount(region: region, state: name, count: count))
                }
            }
            return counts
        }
    }

    package func hypervisor(_ id: String) -> Scheduler_V2_HypervisorState? {
        state.withLock { $0.hypervisor(id) }
    }

    /// The placement report, without placing.
    ///
    /// The lock is held only to take the region's entries (a copy-on-write reference, not a copy): the report, which
    /// looks at every hypervisor of the region, is built outside it, so placements go on meanwhile.
    package func explain(_ request: Scheduler_V2_PlaceRequest) -> Scheduler_V2_PlaceResponse {
        let (entries, starting) = state.withLock { state in
            state.expire(now: now(), policy: policy)
            return (state.regions[request.region]?.entries ?? [], state.notReady(request.region, startup: startup))
        }
        var report = PlacementRules.report(
            candidates: entries.lazy.map { ($0.state, $0.held) }, request: request, policy: policy)
        if let starting {
            report.hypervisorId = ""
            report.reason = starting
            report.retryable = true
        }
        return report
    }

    /// Picks a hypervisor and reserves the size on it. Placing an event that already holds a reservation returns
    /// that hypervisor again (the caller may retry). A successful placement carries only the chosen candidate;
    /// when nothing fits, the response has every skip and its reason.
    package func place(_ request: Scheduler_V2_PlaceRequest) -> Scheduler_V2_PlaceResponse {
        state.withLock { state in
            let now = self.now()
            state.expire(now: now, policy: policy)
            if !request.eventId.isEmpty, let existing = state.reservations[request.eventId] {
                return Scheduler_V2_PlaceResponse(
                    hypervisorId: existing.hypervisorId, router: state.hypervisor(existing.hypervisorId)?.router ?? ""
                )
            }
            if let starting = state.notReady(request.region, startup: startup) {
                return Scheduler_V2_PlaceResponse(reason: starting, retryable: true)
            }
            let best = Self.best(in: &state, for: request, policy: policy)
            guard let best else {
                // Nothing fits: the full report says why, hypervisor by hypervisor.
                return PlacementRules.report(
                    hypervisors: state.allHypervisors, held: state.held, request: request, policy: policy)
            }
            let key = request.eventId.isEmpty ? "anonymous-\(state.reservations.count)-\(now)" : request.eventId
            state.hold(
                key,
                Reservation(
                    hypervisorId: best.id, size: request.size ?? Scheduler_V2_Size(),
                    customer: request.customer, dropletId: request.dropletId, expires: now.advanced(by: reservationTTL)
                ), policy: policy)
            return Scheduler_V2_PlaceResponse(
                hypervisorId: best.id,
                ranking: [
                    Scheduler_V2_Candidate(hypervisorId: best.id, score: best.score, hostsCustomer: best.hostsCustomer)
                ],
                router: best.router
            )
        }
    }

    /// The best candidate of the request's region: a scan of its slots, contiguous plain numbers. A function of its
    /// own so that its reference to the region ends before the caller holds capacity: were it still alive, that
    /// write would copy the region (a copy on write), for each placement.
    private static func best(
        in state: inout State, for request: Scheduler_V2_PlaceRequest, policy: PlacementPolicy
    ) -> (id: String, score: Double, hostsCustomer: Bool, router: String)? {
        guard state.regions[request.region] != nil else { return nil }
        state.regions[request.region]?.refreshOrders()
        guard let region = state.regions[request.region] else { return nil }
        let hosting = region.hosting[request.customer] ?? []
        let best = region.slots.withUnsafeBufferPointer { slots in
            PlacementRules.best(
                candidates: slots.lazy.map { ($0, $0.held) }, request: request, policy: policy,
                hostsCustomer: { slot in hosting.contains(Int(slot.index)) }
            )
        }
        return best.map { best in
            let state = region.entries[Int(best.hypervisor.index)].state
            return (state.id, best.score, best.hostsCustomer, state.router)
        }
    }

    /// Ends an event's reservation; `false` if it held none. For a completed create whose droplet the hypervisor has
    /// not reported yet, the room stays held until it does (or the reservation expires): released earlier, the
    /// droplet would be counted neither in the hypervisor's usage nor here, and the room could be given twice.
    @discardableResult
    package func release(eventId: String, completed: Bool = false) -> Bool {
        state.withLock { state in
            guard let reservation = state.reservations[eventId] else {
                if !state.inFlightLoaded { state.releasedWhileLoading.insert(eventId) }
                return false
            }
            if completed, reservation.dropletId != 0,
                state.hypervisor(reservation.hypervisorId)?.dropletIds.contains(reservation.dropletId) != true
            {
                return true
            }
            state.drop(eventId, policy: policy)
            return true
        }
    }

    package var reservationCount: Int { state.withLock { $0.reservations.count } }
}

extension [UInt64] {
    /// Bit `position` of a bitmap, growing it as needed to set one.
    fileprivate mutating func set(_ position: Int, _ on: Bool) {
        let word = position >> 6
        let bit = UInt64(1) << UInt64(position & 63)
        if on {
            if word >= count { append(contentsOf: repeatElement(0, count: word - count + 1)) }
            self[word] |= bit
        } else if word < count {
            self[word] &= ~bit
        }
    }

    fileprivate func contains(_ position: Int) -> Bool {
        let word = position >> 6
        return word < count && self[word] & (UInt64(1) << UInt64(position & 63)) != 0
    }
}
