package import HarpoonAPI

/// Which event status changes are allowed, and what each does to the event's droplet.
///
/// Events move forward only: pending → placed → delivered → running → completed or errored (steps may be skipped,
/// and any non-terminal state may end in errored). Terminal states absorb: reporting the same terminal state again
/// is a no-op, anything else is refused, so an event reaches exactly one terminal state however often it is
/// reported (delivery is at least once).
package enum EventTransitions {
    private static func rank(_ status: Harpoon_V1_Event.Status) -> Int {
        switch status {
        case .pending: 0
        case .placed: 1
        case .delivered: 2
        case .running: 3
        case .completed, .errored: 4
        case .unrecognized: -1
        }
    }

    package static func isTerminal(_ status: Harpoon_V1_Event.Status) -> Bool {
        status == .completed || status == .errored
    }

    /// Throws FAILED_PRECONDITION for a change that is not allowed.
    package static func check(from current: Harpoon_V1_Event.Status, to next: Harpoon_V1_Event.Status, eventId: Int64) throws(RPCError) {
        if case .unrecognized(let value) = next {
            throw RPCError(code: .invalidArgument, message: "unknown event status \(value)")
        }
        if isTerminal(current) {
            guard next == current else {
                throw RPCError(code: .failedPrecondition, message: "event \(eventId) is already \(current); it cannot become \(next)")
            }
            return
        }
        guard rank(next) >= rank(current) else {
            throw RPCError(code: .failedPrecondition, message: "event \(eventId) is \(current); it cannot go back to \(next)")
        }
    }

    /// The droplet status an event's new status implies, if any.
    package static func dropletStatus(eventType: String, eventStatus: Harpoon_V1_Event.Status) -> Harpoon_V1_Droplet.Status? {
        switch (eventType, eventStatus) {
        case ("create", .completed), ("power_on", .completed), ("reboot", .completed), ("power_cycle", .completed): .active
        case ("create", .errored): .errored
        case ("destroy", .completed): .deleted
        case ("power_off", .completed), ("shutdown", .completed): .off
        default: nil
        }
    }
}
