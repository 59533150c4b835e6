internal import HarpoonAPI
internal import Logging
internal import NIOCore
internal import PostgresNIO
internal import Synchronization

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
    /// Whether running them changes events (each then gets a cursor).
    var changesEvents: Bool { !creations.isEmpty || !changes.isEmpty }

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

/// What running deferred writes did: the events changed, the ids of the rows created (by slot), and the cursors
/// given (when the writes ran under the cursor lock).
struct Flushed: Sendable {
    var changed: [Int64] = []
    var created: [Int: CreatedIds] = [:]
    var cursors: [Int64: Int64] = [:]
}

/// Slots for deferred creations, unique in the process (a transaction's creations are told apart by them).
private final class SlotCounter: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.add(1, ordering: .relaxed).newValue }
}

extension PostgresHarpoonStore {
    /// Settlements of outbox entries. kind: 0 acknowledge (the entry goes), 1 reschedule (due later), 2 hand over (to
    /// another destination, due later, attempts from 0).
    enum Settle: StatementText {
        static let sql = """
            WITH input AS MATERIALIZED (
                SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::float8[]) AS s(id, kind, destination, until)
            ), acknowledged AS (
                DELETE FROM outbox USING input s WHERE s.kind = 0 AND outbox.id = s.id
            )
            UPDATE outbox SET not_before = s.until,
                destination = CASE WHEN s.kind = 2 THEN s.destination ELSE outbox.destination END,
                attempts = CASE WHEN s.kind = 2 THEN 0 ELSE outbox.attempts END
            FROM input s WHERE s.kind <> 0 AND outbox.id = s.id
            """
    }

    /// New droplets, their create events and the events' first outbox entries. Ids are taken up front (the CTE is
    /// materialized once), so that each row's droplet, event and entry are known together and returned by slot,
    /// whatever order the inserts run in.
    enum Create: StatementText {
        static let sql = """
            WITH input AS MATERIALIZED (
                SELECT nextval('droplets_id_seq') AS droplet_id, nextval('events_id_seq') AS event_id,
                       nextval('outbox_id_seq') AS entry_id, CASE WHEN $15::bool THEN nextval('harpoon_cursor') END AS cursor, i.*
                FROM unnest(
                    $1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[], $8::text[], $9::int4[],
                    $10::bytea[], $11::float8[], $12::float8[], $13::text[], $17::text[], $18::text[]
                ) AS i(slot, customer, name, region, image, droplet_status, type, hypervisor_id, event_status, payload, now, not_before, key,
                       request_id, traceparent)
            ), droplets_written AS (
                INSERT INTO droplets (id, customer, name, region, size, image, status, created_at)
                SELECT droplet_id, customer, name, region, payload, image, droplet_status, now FROM input
            ), events_written AS (
                INSERT INTO events (id, type, droplet_id, customer, region, hypervisor_id, status, payload, created_at, updated_at, cursor,
                                    request_id, traceparent)
                SELECT event_id, type, droplet_id, customer, region, hypervisor_id, event_status, payload, now, now, cursor, request_id, traceparent
                FROM input
            ), queued AS (
                INSERT INTO outbox (id, event_id, destination, not_before) SELECT entry_id, event_id, $14::text, not_before FROM input
            ), history AS (
                INSERT INTO event_history (event_id, status, hypervisor_id, reason, at, actor)
                SELECT event_id, event_status, hypervisor_id, '', now, $16::text FROM input
            ), keyed AS (
                UPDATE idempotency SET droplet_id = input.droplet_id, event_id = input.event_id
                FROM input WHERE input.key <> '' AND idempotency.key = input.key
            )
            SELECT slot, droplet_id, event_id, entry_id, cursor FROM input
            """
    }

    /// Events as rules decided them, their outboxes and droplets. Each part sees the same snapshot, so an event's
    /// outbox is cleared before (not after) its new entry is added; a droplet column is written only where its flag
    /// says the change sets it.
    enum Change: StatementText {
        static let sql = """
            WITH input AS MATERIALIZED (
                SELECT * FROM unnest(
                    $1::int8[], $2::int4[], $3::text[], $4::text[], $5::int4[], $6::float8[], $7::bool[], $8::bool[], $9::text[],
                    $10::float8[], $11::int8[], $12::bool[], $13::int4[], $14::bool[], $15::text[], $16::bool[], $17::text[],
                    $18::bool[], $19::text[], $21::text[], $22::text[], $23::text[]
                ) AS w(id, status, hypervisor_id, error, refusals, now, clears, enqueues, destination, not_before, droplet_id,
                       sets_status, droplet_status, sets_hypervisor, droplet_hypervisor, sets_address, droplet_address, sets_error, droplet_error,
                       step_hypervisor, step_reason, step_by)
            ), changed AS (
                UPDATE events SET status = w.status, hypervisor_id = w.hypervisor_id, error = w.error, refusals = w.refusals,
                updated_at = w.now, cursor = CASE WHEN $20::bool THEN nextval('harpoon_cursor') ELSE events.cursor END
                FROM input w WHERE events.id = w.id
                RETURNING events.id, events.cursor
            ), history AS (
                INSERT INTO event_history (event_id, status, hypervisor_id, reason, at, actor)
                SELECT id, status, step_hypervisor, step_reason, now, step_by FROM input
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
            SELECT id, cursor FROM changed
            """
    }

    /// Runs deferred writes: the settlements in one statement, the creations in another, the changes in a third.
    /// (The settlements first: a write settles its entry before it changes its event, and may clear the event's outbox.)
    ///
    /// - Parameter stampingCursors: the transaction holds the cursor lock and commits next: events get their cursors
    ///   as they are written.
    static func flush(
        _ connection: PostgresConnection, _ logger: Logger, _ writes: DeferredWrites, stampingCursors: Bool
    ) async throws -> Flushed {
        var flushed = Flushed()
        if !writes.settlements.isEmpty {
            let settlements = writes.settlements
            var binds = PostgresBindings()
            binds.append(settlements.map(\.entry.id))
            binds.append(
                settlements.map { settlement -> Int32 in
                    switch settlement {
                    case .acknowledge: 0
                    case .reschedule: 1
                    case .handOver: 2
                    }
                })
            binds.append(
                settlements.map { settlement -> String in
                    if case .handOver(_, let destination, _) = settlement { return destination.rawValue }
                    return ""
                })
            binds.append(
                settlements.map { settlement -> Double in
                    switch settlement {
                    case .acknowledge: 0
                    case .reschedule(_, let until), .handOver(_, _, let until): until
                    }
                })
            for try await _ in try await connection.execute(Prepared<Settle, Void>(binds), logger: logger) {}
        }
        if !writes.creations.isEmpty {
            let rows = writes.creations.map(\.creation)
            var binds = PostgresBindings()
            binds.append(writes.creations.map { Int64($0.slot) })
            binds.append(rows.map(\.rows.droplet.customer))
            binds.append(rows.map(\.rows.droplet.name))
            binds.append(rows.map(\.rows.droplet.region))
            binds.append(rows.map(\.rows.droplet.image))
            binds.append(rows.map(\.rows.droplet.status.rawValue))
            binds.append(rows.map(\.rows.event.type))
            binds.append(rows.map(\.rows.event.hypervisorId))
            binds.append(rows.map(\.rows.event.status.rawValue))
            binds.append(rows.map { ByteBuffer(bytes: $0.rows.event.payload) })
            binds.append(rows.map(\.now))
            binds.append(rows.map(\.notBefore))
            binds.append(rows.map(\.key))
            binds.append(OutboxDestination.scheduler.rawValue)
            binds.append(stampingCursors)
            binds.append(HarpoonRules.Actor.request.rawValue)
            binds.append(rows.map(\.rows.event.requestId))
            binds.append(rows.map(\.rows.event.traceparent))
            let statement = Prepared<Create, (Int64, Int64, Int64, Int64, Int64?)>(bindings: binds) {
                try $0.decode((Int64, Int64, Int64, Int64, Int64?).self)
            }
            for try await (slot, dropletId, eventId, entryId, cursor) in try await connection.execute(
                statement, logger: logger)
            {
                flushed.created[Int(slot)] = CreatedIds(dropletId: dropletId, eventId: eventId, entryId: entryId)
                flushed.changed.append(eventId)
                if let cursor { flushed.cursors[eventId] = cursor }
            }
        }
        if !writes.changes.isEmpty {
            let changes = writes.changes
            let events = changes.map(\.write.event)
            let droplets = changes.map(\.write.droplet)
            var binds = PostgresBindings()
            binds.append(events.map(\.id))
            binds.append(events.map(\.status.rawValue))
            binds.append(events.map(\.hypervisorId))
            binds.append(events.map(\.error))
            binds.append(events.map { Int32(clamping: $0.refusals) })
            binds.append(changes.map(\.now))
            binds.append(changes.map(\.write.clearsOutbox))
            binds.append(changes.map { $0.write.enqueue != nil })
            binds.append(changes.map { $0.write.enqueue?.destination.rawValue ?? "" })
            binds.append(changes.map { $0.write.enqueue?.notBefore ?? 0 })
            binds.append(droplets.map { $0?.dropletId ?? 0 })
            binds.append(droplets.map { $0?.status != nil })
            binds.append(droplets.map { $0?.status?.rawValue ?? 0 })
            binds.append(droplets.map { $0?.hypervisorId != nil })
            binds.append(droplets.map { $0?.hypervisorId ?? "" })
            binds.append(droplets.map { $0?.ipv4Address != nil })
            binds.append(droplets.map { $0?.ipv4Address ?? "" })
            binds.append(droplets.map { $0?.error != nil })
            binds.append(droplets.map { $0?.error ?? "" })
            binds.append(stampingCursors)
            binds.append(changes.map(\.write.transition.hypervisorId))
            binds.append(changes.map(\.write.transition.reason))
            binds.append(changes.map(\.write.transition.by))
            let statement = Prepared<Change, (Int64, Int64?)>(bindings: binds) { try $0.decode((Int64, Int64?).self) }
            for try await (id, cursor) in try await connection.execute(statement, logger: logger) {
                if stampingCursors, let cursor { flushed.cursors[id] = cursor }
            }
            flushed.changed += events.map(\.id)
        }
        return flushed
    }
}
