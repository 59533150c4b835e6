@testable import EventRouter
import EventRouterAPI
import HarpoonAPI
import Synchronization
import Testing

/// The statuses a router reported, in order.
final class RecordingResults: ResultSink {
    let reports = Mutex<[(Int64, Harpoon_V1_Event.Status)]>([])
    func report(_ progress: Eventrouter_V1_EventProgress, hypervisorId: String) async throws {
        reports.withLock { $0.append((progress.eventId, progress.status)) }
    }
}

final class IgnoredFleet: FleetSink {
    func report(_ states: [Scheduler_V2_HypervisorState]) async throws {}
    func markUnresponsive(_ hypervisorIds: [String]) async throws {}
}

@Suite("the event router's reports")
struct RouterReportTests {
    @Test("a quick event is reported once, finished; a slow one running, then finished")
    func runningHeldBack() async {
        let results = RecordingResults()
        let router = Router(region: "nyc1", results: results, fleet: IgnoredFleet(), runningReportDelay: .milliseconds(300))
        // Quick: the outcome follows the running report at once.
        let held = Task { await router.progress(.init(eventId: 1, status: .running), from: "hv1") }
        await router.progress(.init(eventId: 1, status: .completed), from: "hv1")
        await held.value
        #expect(results.reports.withLock { $0.map(\.0) } == [1])
        #expect(results.reports.withLock { $0.map(\.1) } == [.completed])
        // Slow: the running report goes out after the delay, the outcome after it.
        await router.progress(.init(eventId: 2, status: .running), from: "hv1")
        await router.progress(.init(eventId: 2, status: .errored, error: "disk on fire"), from: "hv1")
        #expect(results.reports.withLock { $0.filter { $0.0 == 2 }.map(\.1) } == [.running, .errored])
    }
}
