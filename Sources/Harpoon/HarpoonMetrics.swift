internal import CoreMetrics
internal import Foundation
internal import HarpoonAPI
internal import Synchronization

/// What an operator of Harpoon watches beside the RPC metrics every service has (docs/operations.md, Metrics):
/// - `harpoon_group_commit_writes{engine}`: writes per committed transaction (a histogram: its sum over its count is
///   the mean batch);
/// - `harpoon_outbox_entries` and `harpoon_outbox_oldest_seconds`: work waiting to be pushed, and how long the oldest
///   of it has waited since its event was created (0 when empty);
/// - `harpoon_database_connections`: connections open to the database, as the database counts them on PostgreSQL
///   (every replica's), this process's handles on the file on SQLite;
/// - `harpoon_events_unfinished{type,status}`: events in flight (pending, placed, delivered, running) by type and
///   status; a pair that had events and has none now reads 0;
/// - `harpoon_event_latency_seconds{type,stage}`: how long after its request an event reached each stage (placed,
///   delivered, running, completed, errored): a histogram per stage, so request→placed→delivered→completed can be
///   read stage by stage. A stage overtaken by the next is not recorded: a placement delivered at once is recorded
///   delivered, not placed; a delivery whose outcome came first, not at all.
package enum HarpoonMetrics {
    /// The (type, status) pairs sampled so far: one that empties is set to 0, not left at its last count.
    private static let seen = Mutex<Set<[String]>>([])

    static func statusName(_ status: Harpoon_V1_Event.Status) -> String {
        switch status {
        case .pending: "pending"
        case .placed: "placed"
        case .delivered: "delivered"
        case .running: "running"
        case .completed: "completed"
        case .errored: "errored"
        case .unrecognized(let value): "\(value)"
        }
    }

    /// `event` has just reached its status (as written): how long after its creation, by type and stage.
    static func reached(_ event: Harpoon_V1_Event) {
        guard let created = event.createdAt, let updated = event.updatedAt else { return }
        let nanoseconds = (updated.seconds - created.seconds) * 1_000_000_000 + Int64(updated.nanos - created.nanos)
        Timer(
            label: "harpoon_event_latency_seconds",
            dimensions: [("type", event.type), ("stage", statusName(event.status))]
        )
        .recordNanoseconds(max(0, nanoseconds))
    }

    /// A group-commit transaction committed with `writes` writes in it.
    static func committed(writes: Int, engine: String) {
        Recorder(label: "harpoon_group_commit_writes", dimensions: [("engine", engine)], aggregate: true).record(writes)
    }

    /// Reads the outbox and the connections once and sets the gauges; an error leaves them as they were (the next
    /// sample tries again) and is returned for the caller to log.
    @discardableResult
    package static func sample(_ store: any HarpoonStore, now: Double) async -> (any Error)? {
        do {
            let outbox = try await store.outboxSummary()
            Gauge(label: "harpoon_outbox_entries").record(outbox.entries)
            Gauge(label: "harpoon_outbox_oldest_seconds").record(outbox.oldestCreatedAt.map { max(0, now - $0) } ?? 0)
            Gauge(label: "harpoon_database_connections").record(try await store.databaseConnections())
            let unfinished = try await store.unfinishedEvents()
            var counts: [[String]: Int] = [:]
            for group in unfinished { counts[[group.type, statusName(group.status)]] = group.count }
            let pairs = seen.withLock { seen in
                seen.formUnion(counts.keys)
                return seen
            }
            for pair in pairs {
                Gauge(label: "harpoon_events_unfinished", dimensions: [("type", pair[0]), ("status", pair[1])]).record(
                    counts[pair] ?? 0)
            }
            return nil
        } catch {
            return error
        }
    }
}
