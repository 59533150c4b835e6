package import ReservedIPAPI

/// Why the orchestrator refuses a request, in its domain's words. The service maps each to a gRPC status once, where
/// it meets the wire (``rpcError``, in ReservedIPService.swift); the customer API shows the messages as they are.
package enum ReservedIPError: Error, Hashable, Sendable {
    /// "reserved IP 192.0.2.7", "action 12".
    case notFound(String)
    /// The IP has an action in flight.
    case ipBusy
    /// A droplet the action needs has another action in flight.
    case dropletBusy
    case alreadyAssigned(dropletId: Int64)
    /// A droplet has at most one reserved IPv4.
    case dropletHasIP(dropletId: Int64, ip: String)
    case notAssigned
    case noPool(region: String)
    case poolExhausted(region: String)
    case corrupt(String)
}

/// An action a rule decides to start (its id, and the row, are the store's to make).
package struct NewAction: Sendable, Hashable {
    package var type: String
    package var dropletId: Int64
    /// A reassign leaves this droplet first; 0 if none.
    package var fromDropletId: Int64 = 0
    /// The action unassigns a released IP, which goes back to the pool when it ends.
    package var releasing = false
}

/// What releasing an IP comes to.
package enum ReleaseDecision: Sendable, Hashable {
    /// Unassigned: straight back to the pool.
    case returnToPool
    /// Assigned: hidden from the customer now, back to the pool once this unassign ends.
    case unassignFirst(NewAction)
}

/// What the end of an action's current step writes.
package struct StepEnd: Sendable, Hashable {
    package enum Next: Sendable, Hashable {
        /// The action goes on with this step.
        case step(Int)
        /// The action is done; its billing record is of this kind.
        case completed(billing: String)
        case errored(String)
    }

    /// The IP's droplet after the step (0: none), when the step moved it.
    package var ipDropletId: Int64?
    package var next: Next
    /// The action is over: the IP is unlocked where it is.
    package var unlocks: Bool { if case .step = next { false } else { true } }
    /// A released IP whose unassign completed leaves for good.
    package var deletesReleasedIP: Bool
}

/// The orchestrator's state machine as plain functions of the rows they read (an IP, whether droplets are busy,
/// which IP a droplet has) and a request: which action starts, which refusal the customer gets, what the end of a
/// step does. No database, no RPC: the store reads the facts in its transaction, asks, and writes what is decided.
package enum ReservedIPRules {
    /// Reserving an address to a droplet, which then gets an assign action.
    package static func reserveToDroplet(
        dropletId: Int64, dropletBusy: Bool, ipOnDroplet: String?
    ) throws(ReservedIPError) -> NewAction {
        if dropletBusy { throw .dropletBusy }
        if let other = ipOnDroplet { throw .dropletHasIP(dropletId: dropletId, ip: other) }
        return NewAction(type: "assign_ip", dropletId: dropletId)
    }

    /// Assigning `ip` (as the customer sees it; `nil`: not theirs) to a droplet, leaving the droplet it is on first.
    /// `dropletBusy` / `fromDropletBusy`: whether the target, and the droplet the IP is on, have an action in flight;
    /// `ipOnDroplet`: another IP the target already has.
    package static func assign(
        _ ip: Reservedip_V1_ReservedIP?, address: String, to dropletId: Int64, dropletBusy: Bool, fromDropletBusy: Bool,
        ipOnDroplet: String?
    ) throws(ReservedIPError) -> NewAction {
        guard let ip else { throw .notFound("reserved IP \(address)") }
        if ip.locked { throw .ipBusy }
        if ip.dropletId == dropletId { throw .alreadyAssigned(dropletId: dropletId) }
        if dropletBusy || (ip.dropletId != 0 && fromDropletBusy) { throw .dropletBusy }
        if let other = ipOnDroplet { throw .dropletHasIP(dropletId: dropletId, ip: other) }
        return NewAction(type: "assign_ip", dropletId: dropletId, fromDropletId: ip.dropletId)
    }

    /// Unassigning `ip` from its droplet (`dropletBusy`: whether that droplet has an action in flight).
    package static func unassign(
        _ ip: Reservedip_V1_ReservedIP?, address: String, dropletBusy: Bool
    ) throws(ReservedIPError) -> NewAction {
        guard let ip else { throw .notFound("reserved IP \(address)") }
        if ip.locked { throw .ipBusy }
        guard ip.dropletId != 0 else { throw .notAssigned }
        if dropletBusy { throw .dropletBusy }
        return NewAction(type: "unassign_ip", dropletId: ip.dropletId)
    }

    /// Releasing `ip` from the customer's account: refused while an action is in flight.
    package static func release(
        _ ip: Reservedip_V1_ReservedIP?, address: String
    ) throws(ReservedIPError) -> ReleaseDecision {
        guard let ip else { throw .notFound("reserved IP \(address)") }
        if ip.locked { throw .ipBusy }
        guard ip.dropletId != 0 else { return .returnToPool }
        return .unassignFirst(NewAction(type: "unassign_ip", dropletId: ip.dropletId, releasing: true))
    }

    /// The address to reserve next in `region`: the next free one after the last handed out, so that a released
    /// address is not at once someone else's.
    package static func allocate(
        in region: String, pools: AddressPools, after last: UInt32?, used: Set<UInt32>
    ) throws(ReservedIPError) -> UInt32 {
        guard pools.blocks[region] != nil else { throw .noPool(region: region) }
        guard let number = pools.nextFree(in: region, after: last, excluding: used) else {
            throw .poolExhausted(region: region)
        }
        return number
    }

    /// The action's step `phase` ended (`completed`, or errored with `error`): `nil` if that is already recorded (a
    /// repeated report). A completed step moves the IP (onto the step's droplet for an assign, off for an unassign)
    /// and the action on to its next step or to its end; an errored one ends the action where the IP is.
    package static func finishStep(_ state: ActionState, phase: Int, completed: Bool, error: String) -> StepEnd? {
        guard state.action.status == .inProgress, state.phase == phase, let step = state.currentStep else { return nil }
        guard completed else { return StepEnd(next: .errored(error), deletesReleasedIP: false) }
        let ipDropletId: Int64 = step.type == "assign_ip" ? step.dropletId : 0
        if phase + 1 < state.steps.count {
            return StepEnd(ipDropletId: ipDropletId, next: .step(phase + 1), deletesReleasedIP: false)
        }
        return StepEnd(
            ipDropletId: ipDropletId,
            next: .completed(billing: state.action.type == "assign_ip" ? "assign" : "unassign"),
            deletesReleasedIP: state.releasing
        )
    }
}
