import SchedulerAPI
import Synchronization
import Testing

@testable import Scheduler

/// A placement in flight of one small droplet.
func inFlight(_ event: String, on hypervisorId: String, droplet: Int64, region: String = "nyc1") -> HeldPlacement {
    HeldPlacement(
        eventId: event, hypervisorId: hypervisorId, region: region, customer: "alice", dropletId: droplet, size: small)
}

/// Placements in flight from a list, failing the first `failures` times.
final class ListedPlacements: InFlightPlacementSource {
    let placements: [HeldPlacement]
    let failuresLeft: Mutex<Int>

    init(_ placements: [HeldPlacement], failures: Int = 0) {
        self.placements = placements
        failuresLeft = Mutex(failures)
    }

    struct Unavailable: Error {}

    func placementsInFlight() async throws -> [HeldPlacement] {
        let fail = failuresLeft.withLock { left in
            defer { left = max(0, left - 1) }
            return left > 0
        }
        if fail { throw Unavailable() }
        return placements
    }
}

@Suite("a scheduler that starts while placements are in flight")
struct RecoveryTests {
    @Test("nothing is placed until the placements in flight are loaded and the region was reported completely")
    func waitsForBothHalves() {
        let fleet = Fleet(startup: .recovering)
        // A router's partial report: the hypervisor is known, but the fleet asks for everything.
        #expect(fleet.report([hypervisor("hv1")], region: "nyc1", complete: false).needsComplete)
        let before = fleet.place(place(small, event: "e1"))
        #expect(before.hypervisorId.isEmpty)
        #expect(before.retryable)
        #expect(before.reason.contains("has not loaded the placements in flight"), "\(before.reason)")
        #expect(fleet.explain(place(small)).hypervisorId.isEmpty)
        fleet.restore([])
        let loaded = fleet.place(place(small, event: "e1"))
        #expect(loaded.hypervisorId.isEmpty)
        #expect(loaded.retryable)
        #expect(loaded.reason.contains("no router of nyc1 has reported all of its hypervisors"), "\(loaded.reason)")
        // The complete report: the region opens, and the fleet asks for no more complete reports of it.
        #expect(!fleet.report([hypervisor("hv1")], region: "nyc1", complete: true).needsComplete)
        #expect(!fleet.report([hypervisor("hv1")], region: "nyc1", complete: false).needsComplete)
        #expect(fleet.place(place(small, event: "e1")).hypervisorId == "hv1")
        // Another region stays closed until its own router reports completely.
        #expect(fleet.report([hypervisor("hv9", region: "sfo3")], region: "sfo3", complete: false).needsComplete)
        #expect(fleet.place(place(small, region: "sfo3", event: "e2")).reason.contains("sfo3"))
        #expect(fleet.startingReason(region: "nyc1") == nil)
    }

    @Test("a fleet made empty places at once and never asks for a complete report")
    func emptyStartsReady() {
        let fleet = Fleet()
        #expect(!fleet.report([hypervisor("hv1")], region: "nyc1", complete: false).needsComplete)
        #expect(fleet.place(place(small, event: "e1")).hypervisorId == "hv1")
    }

    @Test("restored placements hold their room: the restarted scheduler does not give it again")
    func restoredHoldsCount() {
        let fleet = Fleet(startup: .recovering)
        // Two hypervisors with room for two small droplets each (3 GiB less the 1 GiB floor); the agents have not
        // reported the creates yet (they are on their way), so only the holds know.
        fleet.restore([
            inFlight("1", on: "hv1", droplet: 11), inFlight("2", on: "hv1", droplet: 12),
            inFlight("3", on: "hv2", droplet: 13),
        ])
        fleet.report(
            [hypervisor("hv1", memoryMB: 3072), hypervisor("hv2", memoryMB: 3072)], region: "nyc1", complete: true)
        #expect(fleet.reservationCount == 3)
        // One room left in the whole region, on hv2.
        #expect(fleet.place(place(small, event: "4")).hypervisorId == "hv2")
        let full = fleet.place(place(small, event: "5"))
        #expect(full.hypervisorId.isEmpty)
        #expect(full.retryable)  // holds are in the way: they end when their events do
        // The agents report the droplets: the holds are done, the room stays taken by the droplets themselves.
        fleet.report(
            [hosting("hv1", memoryMB: 3072, droplets: [11, 12]), hosting("hv2", memoryMB: 3072, droplets: [13])],
            region: "nyc1", complete: false)
        #expect(fleet.reservationCount == 1)  // event 4's, whose droplet is not reported yet
        #expect(fleet.place(place(small, event: "6")).hypervisorId.isEmpty)
    }

    @Test(
        "a restored placement whose droplet is already reported, or whose event was released meanwhile, holds nothing")
    func restoreSkipsFinished() {
        let fleet = Fleet(startup: .recovering)
        fleet.report([hosting("hv1", memoryMB: 4096, droplets: [11])], region: "nyc1", complete: true)
        #expect(!fleet.release(eventId: "2"))  // finished before the load came back
        fleet.restore([
            inFlight("1", on: "hv1", droplet: 11), inFlight("2", on: "hv1", droplet: 12),
            inFlight("3", on: "hv1", droplet: 13),
        ])
        #expect(fleet.reservationCount == 1)
        // Restoring again (a page seen twice) holds nothing twice.
        fleet.restore([inFlight("3", on: "hv1", droplet: 13)])
        #expect(fleet.reservationCount == 1)
        // 4 GiB less the floor: droplet 11 and event 3's hold leave room for one more.
        #expect(fleet.place(place(small, event: "4")).hypervisorId == "hv1")
        #expect(fleet.place(place(small, event: "5")).hypervisorId.isEmpty)
    }

    @Test("holds on a hypervisor not reported yet are taken by it when it appears, and released like any other")
    func holdsOnUnknownHypervisors() {
        let fleet = Fleet(startup: .recovering)
        fleet.restore([inFlight("1", on: "hv1", droplet: 11), inFlight("2", on: "hv1", droplet: 12)])
        fleet.report([hypervisor("hv1", memoryMB: 3072)], region: "nyc1", complete: true)
        #expect(fleet.place(place(small, event: "3")).hypervisorId.isEmpty)
        // Event 1 failed: its room comes back.
        #expect(fleet.release(eventId: "1"))
        #expect(fleet.place(place(small, event: "3")).hypervisorId == "hv1")
        // A hold released before its hypervisor appears leaves nothing behind.
        fleet.restore([inFlight("7", on: "hv7", droplet: 71)])
        #expect(fleet.release(eventId: "7"))
        fleet.report([hypervisor("hv7", memoryMB: 2048)], region: "nyc1", complete: false)
        #expect(fleet.explain(place(small)).ranking.contains { $0.hypervisorId == "hv7" })
    }

    @Test("recovery tries again until the source answers, then opens the fleet")
    func recoverRetries() async {
        let fleet = Fleet(startup: .recovering)
        let failures = Mutex(0)
        let source = ListedPlacements([inFlight("1", on: "hv1", droplet: 11)], failures: 2)
        // A backoff of a millisecond: the test is about trying again, not about how long it waits.
        var quick = Fleet.recoveryBackoff
        quick.initial = .milliseconds(1)
        quick.maximum = .milliseconds(1)
        let loaded = await fleet.recover(from: source, backoff: quick) { _ in failures.withLock { $0 += 1 } }
        #expect(loaded)
        #expect(failures.withLock { $0 } == 2)
        #expect(fleet.inFlightLoaded)
        #expect(fleet.reservationCount == 1)
    }
}
