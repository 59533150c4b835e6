import ReservedIPAPI
import Testing

@testable import ReservedIP

/// The orchestrator's state machine as plain values: no database, no Harpoon, no sockets.
@Suite("the reserved-IP rules, as plain values")
struct ReservedIPRulesTests {
    func ip(on dropletId: Int64 = 0, locked: Bool = false) -> Reservedip_V1_ReservedIP {
        Reservedip_V1_ReservedIP(
            ip: "192.0.2.7", customer: "alice", region: "nyc1", dropletId: dropletId, locked: locked)
    }

    func state(
        _ type: String, droplet: Int64, from: Int64 = 0, phase: Int = 0, releasing: Bool = false,
        status: Reservedip_V1_Action.Status = .inProgress
    ) -> ActionState {
        ActionState(
            action: Reservedip_V1_Action(id: 1, type: type, status: status, ip: "192.0.2.7", dropletId: droplet),
            fromDropletId: from, phase: phase, eventId: 0, releasing: releasing
        )
    }

    @Test("assign: each refusal in its turn, a first assign, and a reassign that leaves the old droplet first")
    func assign() throws {
        let a = "192.0.2.7"
        #expect(throws: ReservedIPError.notFound("reserved IP \(a)")) {
            try ReservedIPRules.assign(
                nil, address: a, to: 5, dropletBusy: false, fromDropletBusy: false, ipOnDroplet: nil)
        }
        #expect(throws: ReservedIPError.ipBusy) {
            try ReservedIPRules.assign(
                ip(locked: true), address: a, to: 5, dropletBusy: true, fromDropletBusy: false, ipOnDroplet: nil)
        }
        #expect(throws: ReservedIPError.alreadyAssigned(dropletId: 5)) {
            try ReservedIPRules.assign(
                ip(on: 5), address: a, to: 5, dropletBusy: false, fromDropletBusy: false, ipOnDroplet: nil)
        }
        #expect(throws: ReservedIPError.dropletBusy) {
            try ReservedIPRules.assign(
                ip(), address: a, to: 5, dropletBusy: true, fromDropletBusy: false, ipOnDroplet: nil)
        }
        #expect(throws: ReservedIPError.dropletBusy) {
            try ReservedIPRules.assign(
                ip(on: 4), address: a, to: 5, dropletBusy: false, fromDropletBusy: true, ipOnDroplet: nil)
        }
        #expect(throws: ReservedIPError.dropletHasIP(dropletId: 5, ip: "192.0.2.9")) {
            try ReservedIPRules.assign(
                ip(), address: a, to: 5, dropletBusy: false, fromDropletBusy: false, ipOnDroplet: "192.0.2.9")
        }
        #expect(
            try ReservedIPRules.assign(
                ip(), address: a, to: 5, dropletBusy: false, fromDropletBusy: true, ipOnDroplet: nil)
                == NewAction(type: "assign_ip", dropletId: 5))
        let reassign = try ReservedIPRules.assign(
            ip(on: 4), address: a, to: 5, dropletBusy: false, fromDropletBusy: false, ipOnDroplet: nil)
        #expect(reassign == NewAction(type: "assign_ip", dropletId: 5, fromDropletId: 4))
        #expect(
            state("assign_ip", droplet: 5, from: 4).steps == [
                ActionStep(type: "unassign_ip", dropletId: 4), ActionStep(type: "assign_ip", dropletId: 5),
            ])
    }

    @Test("unassign, release and reserve-to-droplet refuse what they must")
    func otherTransitions() throws {
        #expect(throws: ReservedIPError.notAssigned) {
            try ReservedIPRules.unassign(ip(), address: "x", dropletBusy: false)
        }
        #expect(throws: ReservedIPError.ipBusy) {
            try ReservedIPRules.unassign(ip(on: 4, locked: true), address: "x", dropletBusy: false)
        }
        #expect(throws: ReservedIPError.dropletBusy) {
            try ReservedIPRules.unassign(ip(on: 4), address: "x", dropletBusy: true)
        }
        #expect(
            try ReservedIPRules.unassign(ip(on: 4), address: "x", dropletBusy: false)
                == NewAction(type: "unassign_ip", dropletId: 4))
        #expect(try ReservedIPRules.release(ip(), address: "x") == .returnToPool)
        #expect(
            try ReservedIPRules.release(ip(on: 4), address: "x")
                == .unassignFirst(NewAction(type: "unassign_ip", dropletId: 4, releasing: true)))
        #expect(throws: ReservedIPError.ipBusy) { try ReservedIPRules.release(ip(on: 4, locked: true), address: "x") }
        #expect(throws: ReservedIPError.notFound("reserved IP x")) { try ReservedIPRules.release(nil, address: "x") }
        #expect(throws: ReservedIPError.dropletBusy) {
            try ReservedIPRules.reserveToDroplet(dropletId: 5, dropletBusy: true, ipOnDroplet: nil)
        }
        #expect(throws: ReservedIPError.dropletHasIP(dropletId: 5, ip: "192.0.2.9")) {
            try ReservedIPRules.reserveToDroplet(dropletId: 5, dropletBusy: false, ipOnDroplet: "192.0.2.9")
        }
    }

    @Test("addresses are handed out in turn, and a region without a pool or without a free address is refused")
    func allocation() throws {
        let pools = try AddressPools(parsing: ["nyc1=192.0.2.0/29"])
        let first = try ReservedIPRules.allocate(in: "nyc1", pools: pools, after: nil, used: [])
        let second = try ReservedIPRules.allocate(in: "nyc1", pools: pools, after: first, used: [first])
        #expect(second != first)
        // Both released (no longer used): the next goes on from the last handed out, not back to the first.
        let third = try ReservedIPRules.allocate(in: "nyc1", pools: pools, after: second, used: [])
        #expect(third != first && third != second)
        #expect(throws: ReservedIPError.noPool(region: "ams3")) {
            try ReservedIPRules.allocate(in: "ams3", pools: pools, after: nil, used: [])
        }
        var all: Set<UInt32> = []
        var last: UInt32?
        while let next = try? ReservedIPRules.allocate(in: "nyc1", pools: pools, after: last, used: all) {
            all.insert(next)
            last = next
        }
        #expect(throws: ReservedIPError.poolExhausted(region: "nyc1")) {
            try ReservedIPRules.allocate(in: "nyc1", pools: pools, after: last, used: all)
        }
    }

    @Test(
        "a step's end moves the IP and the action on; a repeat does nothing; a released IP leaves when its unassign completes"
    )
    func stepEnds() {
        let reassign = state("assign_ip", droplet: 5, from: 4)
        #expect(
            ReservedIPRules.finishStep(reassign, phase: 0, completed: true, error: "")
                == StepEnd(ipDropletId: 0, next: .step(1), deletesReleasedIP: false))
        var second = reassign
        second.phase = 1
        let done = ReservedIPRules.finishStep(second, phase: 1, completed: true, error: "")
        #expect(done == StepEnd(ipDropletId: 5, next: .completed(billing: "assign"), deletesReleasedIP: false))
        #expect(done?.unlocks == true)
        #expect(
            ReservedIPRules.finishStep(second, phase: 0, completed: true, error: "") == nil,
            "a report for a step already past")
        #expect(
            ReservedIPRules.finishStep(
                state("assign_ip", droplet: 5, status: .completed), phase: 0, completed: true, error: "") == nil)
        let failed = ReservedIPRules.finishStep(reassign, phase: 0, completed: false, error: "hypervisor unreachable")
        #expect(failed == StepEnd(next: .errored("hypervisor unreachable"), deletesReleasedIP: false))
        #expect(failed?.unlocks == true && failed?.ipDropletId == nil, "an errored step leaves the IP where it is")
        let release = state("unassign_ip", droplet: 4, releasing: true)
        #expect(
            ReservedIPRules.finishStep(release, phase: 0, completed: true, error: "")
                == StepEnd(ipDropletId: 0, next: .completed(billing: "unassign"), deletesReleasedIP: true))
        #expect(ReservedIPRules.finishStep(release, phase: 0, completed: false, error: "x")?.deletesReleasedIP == false)
    }

    @Test("each refusal maps to one gRPC status and the customer's message, at the service edge")
    func statuses() {
        #expect(
            ReservedIPError.ipBusy.rpcError
                == RPCError(code: .failedPrecondition, message: "The reserved IP already has a pending event."))
        #expect(ReservedIPError.poolExhausted(region: "nyc1").rpcError.code == .resourceExhausted)
        #expect(
            ReservedIPError.notFound("action 3").rpcError == RPCError(code: .notFound, message: "action 3 not found"))
        #expect(
            ReservedIPError.dropletHasIP(dropletId: 5, ip: "192.0.2.9").rpcError.message
                == "Droplet 5 already has reserved IP 192.0.2.9.")
    }
}
