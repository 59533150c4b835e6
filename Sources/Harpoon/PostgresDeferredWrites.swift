internal import Logging
internal import NIOCore
internal import PostgresNIO
internal import Synchronization
internal import HarpoonAPI

/// The writes of one ``PostgresWriter`` transaction that wait to run together: every droplet creation in one
/// statement and every event change in another, instead of one statement (and one round trip, parse and plan) each.
///
/// A statement writes each row once, so a change to an event or a droplet that a deferred change already touches
/// is not taken (``accepts(_:)``): the deferred writes run first. Anything else that reads or writes in the
/// transaction runs them first too (``WriteTransaction/flush()``), so every statement sees the writes before it.
struct DeferredWrites: Sendable {
    /// A new droplet, its create event and the event's first outbox entry (to the scheduler).
    struct Creation: Sendable {
        var rows: DropletAndEvent
        /// The idempotency key the creation answers ("": none); its row is claimed already.
        var key: String
        var now: Double
        /// When the entry is due to any replica.
        var notBefore: Double
    }

    private(set) var creations: [(slot: Int, creation: Creation)] = []
    private(set) var changes: [(write: EventWrite, now: Double)] = []
    private(set) var settlements: [OutboxSettlement] = []
    private var events: Set<Int64> = []
    private var entries: Set<Int64> = []
    private var droplets: Set<Int64> = []
    private static let slots = SlotCounter()

    var isEmpty: Bool { creations.isEmpty && changes.isEmpty && settlements.isEmpty }

    /// Adds a creation; returns its slot (where its ids will be in ``CommitOutcome/created``).
    mutating func add(_ creation: Creation) -> Int {
        let slot = Self.slots.next()
        creations.append((slot, creation))
        return slot
    }

    /// Whether the change can join the deferred ones: it touches no event or droplet they touch.
    func accepts(_ write: EventWrite) -> Bool {
        !events.contains(write.event.id) && !(write.droplet.map { droplets.contains($0.dropletId) } ?? false)
    }

    /// Whether the settlement can join the deferred ones: it settles no entry they settle.
    func accepts(_ settlement: OutboxSettlement) -> Bool {
        !entries.contains(settlement.entry.id)
    }

    mutating func add(_ settlement: OutboxSettlement) {
        settlements.append(settlement)
        entries.insert(settlement.entry.id)
    }

    mutating func add(_ write: EventWrite, now: Double) {
        changes.append((write, now))
        events.insert(write.event.id)
        if let droplet = write.droplet { droplets.insert(droplet.dropletId) }
    }
}

/// Slots for deferred creations, unique in the process (a transaction's creations are told apart by them).
private final class SlotCounter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.add(1, ordering: .relaxed).newValue }
}

extension PostgresHarpoonStore {
    /// Runs deferred writes: the settlements in one statement, the creations in another, the changes in a third.
    /// (The settlements first: a write settles its entry before it changes its event, and may clear the event's outbox.)
    static func flush(
        _ connection: PostgresConnection, _ logger: Logger, _ writes: DeferredWrites
    ) async throws -> (changed: [Int64], created: [Int: CreatedIds]) {
        var changed: [Int64] = []
        var created: [Int: CreatedIds] = [:]
        if !writes.settlements.isEmpty {
            // kind: 0 acknowledge (the entry goes), 1 reschedule (due later), 2 hand over (to another destination,
            // due later, attempts from 0).
            let settlements = writes.settlements
            let kinds = settlements.map { settlement -> Int32 in
                switch settlement {
                case .acknowledge: 0
                case .reschedule: 1
                case .handOver: 2
                }
            }
            let destinations = settlements.map { settlement -> String in
                if case .handOver(_, let destination, _) = settlement { return destination.rawValue }
                return ""
            }
            let times = settlements.map { settlement -> Double in
                switch settlement {
                case .acknowledge: 0
                case .reschedule(_, let until), .handOver(_, _, let until): until
                }
            }
            try await connection.query("""
                WITH input AS MATERIALIZED (
                    SELECT * FROM unnest(\(settlements.map(\.entry.id)), \(kinds), \(destinations), \(times)) AS s(id, kind, destination, until)
                ), acknowledged AS (
                    DELETE FROM outbox USING input s WHERE s.kind = 0 AND outbox.id = s.id
                )
                UPDATE outbox SET not_before = s.until,
                    destination = CASE WHEN s.kind = 2 THEN s.destination ELSE outbox.destination END,
                    attempts = CASE WHEN s.kind = 2 THEN 0 ELSE outbox.attempts END
                FROM input s WHERE s.kind <> 0 AND outbox.id = s.id
                """, logger: logger)
        }
        if !writes.creations.isEmpty {
            let rows = writes.creations.map(\.creation)
            // Ids taken up front (the CTE is materialized once), so that each row's droplet, event and entry are
            // known together and returned by slot, whatever order the inserts run in.
            let query: PostgresQuery = """
                WITH input AS MATERIALIZED (
                    SELECT nextval('droplets_id_seq') AS droplet_id, nextval('events_id_seq') AS event_id,
                           nextval('outbox_id_seq') AS entry_id, i.*
                    FROM unnest(
                        \(writes.creations.map { Int64($0.slot) }), \(rows.map(\.rows.droplet.customer)), \(rows.map(\.rows.droplet.name)),
                        \(rows.map(\.rows.droplet.region)), \(rows.map(\.rows.droplet.image)), \(rows.map(\.rows.droplet.status.rawValue)),
                        \(rows.map(\.rows.event.type)), \(rows.map(\.rows.event.hypervisorId)), \(rows.map(\.rows.event.status.rawValue)),
                        \(rows.map { ByteBuffer(bytes: $0.rows.event.payload) }), \(rows.map(\.now)), \(rows.map(\.notBefore)), \(rows.map(\.key))
                    ) AS i(slot, customer, name, region, image, droplet_status, type, hypervisor_id, event_status, payload, now, not_before, key)
                ), droplets_written AS (
                    INSERT INTO droplets (id, customer, name, region, size, image, status, created_at)
                    SELECT droplet_id, customer, name, region, payload, image, droplet_status, now FROM input
                ), events_written AS (
                    INSERT INTO events (id, type, droplet_id, customer, region, hypervisor_id, status, payload, created_at, updated_at)
                    SELECT event_id, type, droplet_id, customer, region, hypervisor_id, event_status, payload, now, now FROM input
                ), queued AS (
                    INSERT INTO outbox (id, event_id, destination, not_before)
                    SELECT entry_id, event_id, \(OutboxDestination.scheduler.rawValue), not_before FROM input
                ), keyed AS (
                    UPDATE idempotency SET droplet_id = input.droplet_id, event_id = input.event_id
                    FROM input WHERE input.key <> '' AND idempotency.key = input.key
                )
                SELECT slot, droplet_id, event_id, entry_id FROM input
                """
            for try await (slot, dropletId, eventId, entryId) in try await connection.query(query, logger: logger).decode((Int64, Int64, Int64, Int64).self) {
                created[Int(slot)] = CreatedIds(dropletId: dropletId, eventId: eventId, entryId: entryId)
                changed.append(eventId)
            }
        }
        if !writes.changes.isEmpty {
            let changes = writes.changes
            let events = changes.map(\.write.event)
            let droplets = changes.map(\.write.droplet)
            // Each part sees the same snapshot, so an event's outbox is cleared before (not after) its new entry is
            // added; a droplet column is written only where its flag says the change sets it.
            let query: PostgresQuery = """
                WITH input AS MATERIALIZED (
                    SELECT * FROM unnest(
                        \(events.map(\.id)), \(events.map(\.status.rawValue)), \(events.map(\.hypervisorId)), \(events.map(\.error)),
                        \(events.map { Int32(clamping: $0.refusals) }), \(changes.map(\.now)), \(changes.map(\.write.clearsOutbox)),
                        \(changes.map { $0.write.enqueue != nil }), \(changes.map { $0.write.enqueue?.destination.rawValue ?? "" }),
                        \(changes.map { $0.write.enqueue?.notBefore ?? 0 }),
                        \(droplets.map { $0?.dropletId ?? 0 }),
                        \(droplets.map { $0?.status != nil }), \(droplets.map { $0?.status?.rawValue ?? 0 }),
                        \(droplets.map { $0?.hypervisorId != nil }), \(droplets.map { $0?.hypervisorId ?? "" }),
                        \(droplets.map { $0?.ipv4Address != nil }), \(droplets.map { $0?.ipv4Address ?? "" }),
                        \(droplets.map { $0?.error != nil }), \(droplets.map { $0?.error ?? "" })
                    ) AS w(id, status, hypervisor_id, error, refusals, now, clears, enqueues, destination, not_before, droplet_id,
                           sets_status, droplet_status, sets_hypervisor, droplet_hypervisor, sets_address, droplet_address, sets_error, droplet_error)
                ), changed AS (
                    UPDATE events SET status = w.status, hypervisor_id = w.hypervisor_id, error = w.error, refusals = w.refusals,
                    updated_at = w.now FROM input w WHERE events.id = w.id
                ), cleared AS (
                    DELETE FROM outbox USING input w WHERE w.clears AND outbox.event_id = w.id
                ), queued AS (
                    INSERT INTO outbox (event_id, destination, not_before) SELECT id, destination, not_before FROM input WHERE enqueues
                ), placed AS (
                    UPDATE droplets SET
                        status = CASE WHEN w.sets_status THEN w.droplet_status ELSE droplets.status END,
                        hypervisor_id = CASE WHEN w.sets_hypervisor THEN w.droplet_hypervisor ELSE droplets.hypervisor_id END,
                        ipv4_address = CASE WHEN w.sets_address THEN w.droplet_address ELSE droplets.ipv4_address END,
                        error = CASE WHEN w.sets_error THEN w.droplet_error ELSE droplets.error END
                    FROM input w WHERE w.droplet_id <> 0 AND droplets.id = w.droplet_id
                )
                SELECT 1
                """
            try await connection.query(query, logger: logger)
            changed += events.map(\.id)
        }
        return (changed, created)
    }
}
