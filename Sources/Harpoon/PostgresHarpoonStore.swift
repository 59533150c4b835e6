internal import Foundation
package import HarpoonAPI
internal import Logging
internal import PostgresNIO
package import PostgresSupport

/// The events database on PostgreSQL, for deployments beyond one machine: several Harpoon replicas share it.
///
/// Like ``SQLiteHarpoonStore`` it has no rules of its own: inside each transaction it reads the rows a rule of
/// ``HarpoonRules`` needs (locking them, `FOR UPDATE`, since other replicas write too), asks it, and writes what it
/// decides. What differs is what several writers need:
/// - change cursors are handed out in commit order (``PostgresWriter``), so a watcher on any replica sees every
///   replica's changes in cursor order, none skipped;
/// - outbox entries are claimed: an entry a replica is working on (just created, or read by ``dueOutbox(now:limit:)``)
///   is not due for the others until ``outboxLease`` has passed, so a replica that dies has its entries taken over;
/// - every commit that changed events notifies ``channel``; ``listen(_:)`` wakes this replica's worker and watchers.
package final class PostgresHarpoonStore: HarpoonStore {
    package let pool: PostgresPool
    let writer: PostgresWriter
    private let clock: any WallClock
    /// How long an entry stays with the replica that claimed it before the others may take it over.
    package let outboxLease: Double
    package static let channel = "shoal_harpoon_changes"
    /// This replica, in its notifications.
    private let replica = UUID().uuidString

    /// Connects (at most `connections` at once), brings the schema up to date and checks that commits are durable.
    package static func open(
        _ address: PostgresAddress, connections: Int = 8, outboxLease: Double = 30, clock: any WallClock = SystemClock()
    ) async throws -> PostgresHarpoonStore {
        let pool = try await PostgresPool.open(
            address, maximumConnections: connections, applicationName: "harpoon", schema: "harpoon",
            migrations: migrations
        )
        return PostgresHarpoonStore(pool: pool, outboxLease: outboxLease, clock: clock)
    }

    private init(pool: PostgresPool, outboxLease: Double, clock: any WallClock) {
        self.pool = pool
        self.outboxLease = outboxLease
        self.clock = clock
        writer = PostgresWriter(pool: pool, notifyChannel: Self.channel, notifyPayload: replica) {
            connection, logger, ids, entryIds in
            var binds = PostgresBindings()
            binds.append(ids)
            let events = ids.isEmpty ? [] : try await Self.events(connection, logger, LockEvents.self, binds)
            var entries: [Int64: Int64] = [:]
            if !entryIds.isEmpty {
                var binds = PostgresBindings()
                binds.append(entryIds)
                let statement = Prepared<LockEntries, (Int64, Int64)>(bindings: binds) {
                    try $0.decode((Int64, Int64).self)
                }
                for try await (id, eventId) in try await connection.execute(statement, logger: logger) {
                    entries[id] = eventId
                }
            }
            return (events, entries)
        } flush: { connection, logger, writes, stampingCursors in
            try await Self.flush(connection, logger, writes, stampingCursors: stampingCursors)
        }
    }

    package func close() async { await pool.close() }

    /// Calls `changed` whenever another replica commits a change to events (this one's own writers wake what they
    /// must themselves), and `released` when another replica gave outbox entries back (it is stopping), for as long
    /// as the calling task runs. A lost connection calls both (something may have been missed).
    package func listen(changed: @escaping @Sendable () -> Void, released: @escaping @Sendable () -> Void = {}) async {
        let replica = replica
        await pool.listen(channel: Self.channel) { payload in
            switch payload {
            case replica, Self.releasedPrefix + replica: return
            case let payload? where payload.hasPrefix(Self.releasedPrefix): released()
            case nil:
                changed()
                released()
            default: changed()
            }
        }
    }

    /// Notifications that entries were given back start with this, then the replica.
    private static let releasedPrefix = "released:"

    package func releaseOutbox(_ entryIds: [Int64]) async throws {
        guard !entryIds.isEmpty else { return }
        // Due now (those still leased: one settled meanwhile is gone or rescheduled), and every replica told.
        try await pool.transaction { connection in
            try await connection.query(
                "UPDATE outbox SET not_before = \(clock.now()) WHERE id = ANY(\(entryIds)) AND not_before > \(clock.now())",
                logger: pool.logger
            )
            try await connection.query(
                "SELECT pg_notify(\(Self.channel), \(Self.releasedPrefix + replica))", logger: pool.logger)
        }
    }

    /// Connections open to the database as the server counts them (every replica's; each pool is fixed by configuration).
    package func databaseConnections() async throws -> Int { try await pool.serverConnectionCount() }

    static let migrations: [(version: String, statements: [String])] = [
        (
            "v1",
            [
                "CREATE SEQUENCE harpoon_cursor",
                """
                CREATE TABLE droplets (
                    id BIGSERIAL PRIMARY KEY,
                    customer TEXT NOT NULL,
                    name TEXT NOT NULL,
                    region TEXT NOT NULL,
                    size BYTEA NOT NULL,
                    image TEXT NOT NULL,
                    status INT NOT NULL,
                    hypervisor_id TEXT NOT NULL DEFAULT '',
                    ipv4_address TEXT NOT NULL DEFAULT '',
                    error TEXT NOT NULL DEFAULT '',
                    created_at DOUBLE PRECISION NOT NULL
                )
                """,
                "CREATE INDEX droplets_by_customer ON droplets (customer, region, id)",
                """
                CREATE TABLE events (
                    id BIGSERIAL PRIMARY KEY,
                    type TEXT NOT NULL,
                    droplet_id BIGINT NOT NULL,
                    customer TEXT NOT NULL,
                    region TEXT NOT NULL,
                    hypervisor_id TEXT NOT NULL DEFAULT '',
                    status INT NOT NULL,
                    payload BYTEA NOT NULL,
                    error TEXT NOT NULL DEFAULT '',
                    created_at DOUBLE PRECISION NOT NULL,
                    updated_at DOUBLE PRECISION NOT NULL,
                    cursor BIGINT,
                    refusals INT NOT NULL DEFAULT 0
                )
                """,
                "CREATE INDEX events_by_droplet ON events (droplet_id, id)",
                "CREATE INDEX events_by_customer ON events (customer, id)",
                // Given as the transaction commits (NULL until then): see PostgresWriter.
                "CREATE UNIQUE INDEX events_by_cursor ON events (cursor)",
                "CREATE INDEX events_placed_creates ON events (id) WHERE type = 'create' AND status IN (1, 2, 3)",
                "CREATE INDEX events_maintenance ON events (hypervisor_id, id) WHERE type = 'maintenance'",
                """
                CREATE TABLE outbox (
                    id BIGSERIAL PRIMARY KEY,
                    event_id BIGINT NOT NULL,
                    destination TEXT NOT NULL,
                    attempts INT NOT NULL DEFAULT 0,
                    not_before DOUBLE PRECISION NOT NULL DEFAULT 0
                )
                """,
                "CREATE INDEX outbox_by_time ON outbox (not_before, id)",
                "CREATE INDEX outbox_by_event ON outbox (event_id)",
                "CREATE TABLE idempotency (key TEXT PRIMARY KEY, droplet_id BIGINT NOT NULL, event_id BIGINT NOT NULL)",
            ]
        ),
        (
            "v2: event history",
            [
                """
                CREATE TABLE event_history (
                    id BIGSERIAL PRIMARY KEY,
                    event_id BIGINT NOT NULL,
                    status INT NOT NULL,
                    hypervisor_id TEXT NOT NULL,
                    reason TEXT NOT NULL,
                    at DOUBLE PRECISION NOT NULL,
                    actor TEXT NOT NULL
                )
                """,
                "CREATE INDEX event_history_by_event ON event_history (event_id, id)",
            ]
        ),
        // Only events in flight are in it: it stays small however many have finished.
        (
            "v3: unfinished events",
            ["CREATE INDEX events_unfinished ON events (type, status) WHERE status IN (0, 1, 2, 3)"]
        ),
        (
            "v4: request context",
            [
                "ALTER TABLE events ADD COLUMN request_id TEXT NOT NULL DEFAULT '', ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''"
            ]
        ),
    ]

    // MARK: Rows

    private static let dropletColumns =
        "id, customer, name, region, size, image, status, hypervisor_id, ipv4_address, error, created_at"

    private typealias DropletRow = (Int64, String, String, String, Data, String, Int32, String, String, String, Double)

    private static func droplet(_ row: DropletRow) throws -> Harpoon_V1_Droplet {
        let size: Scheduler_V2_Size
        do { size = try Scheduler_V2_Size(serializedBytes: [UInt8](row.4)) } catch {
            throw HarpoonError.corrupt("droplet \(row.0): unreadable size")
        }
        return Harpoon_V1_Droplet(
            id: row.0, customer: row.1, name: row.2, region: row.3, size: size, image: row.5,
            status: Harpoon_V1_Droplet.Status(rawValue: row.6), hypervisorId: row.7, ipv4Address: row.8,
            createdAt: HarpoonRules.timestamp(row.10), error: row.9
        )
    }

    private static func droplets(_ rows: PostgresRowSequence) async throws -> [Harpoon_V1_Droplet] {
        var result: [Harpoon_V1_Droplet] = []
        for try await row in rows.decode(DropletRow.self) { result.append(try droplet(row)) }
        return result
    }

    private static func events(_ rows: PostgresRowSequence) async throws -> [Harpoon_V1_Event] {
        var result: [Harpoon_V1_Event] = []
        for try await row in rows.decode(EventRow.self) { result.append(event(row)) }
        return result
    }

    /// A read on a pooled connection, outside any transaction (each statement sees what was committed when it began).
    private func read<T: Sendable>(_ body: @Sendable (PostgresConnection, Logger) async throws -> T) async throws -> T {
        let logger = pool.logger
        return try await pool.client.withConnection { connection in try await body(connection, logger) }
    }

    private static func query(_ sql: String, _ binds: PostgresBindings = PostgresBindings()) -> PostgresQuery {
        PostgresQuery(unsafeSQL: sql, binds: binds)
    }

    /// The event, locked until the transaction ends (replicas that change it take turns): as the transaction locked it
    /// up front, or read and locked now.
    private static func lockedEvent(_ context: PostgresWriteContext, id: Int64) async throws -> Harpoon_V1_Event? {
        if let event = context.locked.events[id] { return event }
        let event = try await events(
            context.read(query("SELECT \(eventColumns) FROM events WHERE id = $1 FOR UPDATE", binds(id)))
        ).first
        if let event { context.locked.events[id] = event }
        return event
    }

    private static func binds(_ values: any PostgresEncodable & Sendable...) -> PostgresBindings {
        var bindings = PostgresBindings(capacity: values.count)
        for value in values { try? bindings.append(value) }
        return bindings
    }

    /// Inserts a new event and its first outbox entry (`notBefore`: when it is due to any replica); returns the event
    /// as written (its cursor comes at commit) and the entry's id.
    private func insertEvent(
        _ context: PostgresWriteContext, _ template: Harpoon_V1_Event, now: Double, destination: OutboxDestination,
        notBefore: Double
    ) async throws -> (event: Harpoon_V1_Event, entryId: Int64) {
        var event = template
        let step = HarpoonRules.created(template, now: now)
        let rows = try await context.write(
            """
            WITH event AS (
                INSERT INTO events (type, droplet_id, customer, region, hypervisor_id, status, payload, created_at, updated_at, request_id, traceparent)
                VALUES (\(template.type), \(template.dropletId), \(template.customer), \(template.region), \(template.hypervisorId),
                        \(template.status.rawValue), \(Data(template.payload)), \(now), \(now), \(template.requestId), \(template.traceparent))
                RETURNING id
            ), history AS (
                INSERT INTO event_history (event_id, status, hypervisor_id, reason, at, actor)
                SELECT id, \(step.status.rawValue), \(step.hypervisorId), \(step.reason), \(step.at), \(step.by) FROM event
            )
            INSERT INTO outbox (event_id, destination, not_before) SELECT id, \(destination.rawValue), \(notBefore) FROM event
            RETURNING event_id, id
            """)
        var entryId: Int64 = 0
        for try await (eventId, id) in rows.decode((Int64, Int64).self) {
            event.id = eventId
            entryId = id
        }
        context.changed(event: event.id)
        return (event, entryId)
    }

    /// Writes what a rule decided for an event: deferred, with the other changes of the transaction, to one
    /// statement (``flush(_:_:_:)``); returns the event as written (its cursor comes at commit).
    private func apply(
        _ write: EventWrite, _ context: PostgresWriteContext, now: Double
    ) async throws -> Harpoon_V1_Event {
        try await context.deferChange(write, now: now)
        context.locked.events[write.event.id] = write.event
        return write.event
    }

    /// One page of `table` rows matching `condition` (its parameters `$1`…), by id after `afterID` and `offset` more,
    /// with the total that match.
    private func page<Item: Sendable & Identified>(
        table: String, columns: String, condition: String, binds: PostgresBindings, limit: Int, afterID: Int64,
        offset: Int,
        decode: @escaping @Sendable (PostgresRowSequence) async throws -> [Item]
    ) async throws -> Page<Item> {
        try await read { connection, logger in
            var total = 0
            for try await count in try await connection.query(
                Self.query("SELECT count(*)::int8 FROM \(table) WHERE \(condition)", binds), logger: logger
            )
            .decode(Int64.self) {
                total = Int(count)
            }
            var pageBinds = binds
            let first = binds.count + 1
            pageBinds.append(afterID)
            pageBinds.append(Int64(limit + 1))
            pageBinds.append(Int64(max(0, offset)))
            // One row past the page says whether another page follows.
            let rows = try await decode(
                connection.query(
                    Self.query(
                        "SELECT \(columns) FROM \(table) WHERE \(condition) AND id > $\(first) ORDER BY id LIMIT $\(first + 1) OFFSET $\(first + 2)",
                        pageBinds
                    ), logger: logger))
            let items = Array(rows.prefix(limit))
            return Page(items: items, total: total, nextAfterID: rows.count > limit ? items.last?.id : nil)
        }
    }

    // MARK: Droplets

    package func createDropletQueued(
        _ request: Harpoon_V1_CreateDropletRequest, origin: EventOrigin
    ) async throws -> CreatedDroplet {
        try await writer.write { context -> DropletCreation in
            let key = request.idempotencyKey
            if !key.isEmpty {
                // The key first: a replica creating with the same key at the same moment waits here for the other's
                // commit, then finds its answer.
                let claimed = try await context.write(
                    """
                    INSERT INTO idempotency (key, droplet_id, event_id) VALUES (\(key), 0, 0) ON CONFLICT (key) DO NOTHING RETURNING key
                    """)
                var isNew = false
                for try await _ in claimed { isNew = true }
                if !isNew {
                    var answered: (droplet: Harpoon_V1_Droplet?, event: Harpoon_V1_Event?)?
                    for try await (dropletId, eventId) in try await context.read(
                        "SELECT droplet_id, event_id FROM idempotency WHERE key = \(key)"
                    )
                    .decode((Int64, Int64).self) {
                        answered = (
                            try await Self.droplets(
                                context.read(
                                    Self.query(
                                        "SELECT \(Self.dropletColumns) FROM droplets WHERE id = $1",
                                        Self.binds(dropletId)))
                            ).first,
                            try await Self.events(
                                context.read(
                                    Self.query(
                                        "SELECT \(Self.eventColumns) FROM events WHERE id = $1", Self.binds(eventId)))
                            ).first
                        )
                    }
                    if case .existing(let found) = try HarpoonRules.createDroplet(key: key, answered: answered) {
                        return .existing(CreatedDroplet(droplet: found.droplet, event: found.event, entry: nil))
                    }
                }
            }
            let now = self.clock.now()
            // The entry is this replica's (its worker is handed it in memory): the others take it only if this one
            // has not finished with it within the lease. Droplet, create event, entry (and the key's answer) are
            // written with the transaction's other creations, in one statement.
            let creation = DeferredWrites.Creation(
                rows: HarpoonRules.newDroplet(request, origin: origin, now: now), key: key, now: now,
                notBefore: now + self.outboxLease
            )
            return .deferred(slot: context.deferCreation(creation), creation)
        }
    }

    package func droplet(id: Int64) async throws -> Harpoon_V1_Droplet? {
        try await read { connection, logger in
            try await Self.droplets(
                connection.query(
                    Self.query("SELECT \(Self.dropletColumns) FROM droplets WHERE id = $1", Self.binds(id)),
                    logger: logger)
            ).first
        }
    }

    package func droplets(
        customer: String, region: String?, name: String?, limit: Int, afterID: Int64, offset: Int
    ) async throws -> Page<Harpoon_V1_Droplet> {
        var condition = "customer = $1 AND status != $2"
        var binds = Self.binds(customer, Harpoon_V1_Droplet.Status.deleted.rawValue)
        if let region {
            binds.append(region)
            condition += " AND region = $\(binds.count)"
        }
        if let name {
            // As SQLite's NOCASE: ASCII letters only.
            binds.append(name)
            condition += " AND lower(name COLLATE \"C\") = lower($\(binds.count) COLLATE \"C\")"
        }
        return try await page(
            table: "droplets", columns: Self.dropletColumns, condition: condition, binds: binds, limit: limit,
            afterID: afterID, offset: offset,
            decode: Self.droplets
        )
    }

    // MARK: Events

    package func createEvent(
        _ request: Harpoon_V1_CreateEventRequest, region: String, hypervisorId: String, origin: EventOrigin
    ) async throws -> Harpoon_V1_Event {
        try await writer.write { context in
            let key = request.idempotencyKey
            var answered: Harpoon_V1_Event?
            if !key.isEmpty {
                let claimed = try await context.write(
                    "INSERT INTO idempotency (key, droplet_id, event_id) VALUES (\(key), \(request.dropletId), 0) ON CONFLICT (key) DO NOTHING RETURNING key"
                )
                var isNew = false
                for try await _ in claimed { isNew = true }
                if !isNew {
                    for try await eventId in try await context.read(
                        "SELECT event_id FROM idempotency WHERE key = \(key)"
                    ).decode(Int64.self) {
                        answered = try await Self.events(
                            context.read(
                                Self.query("SELECT \(Self.eventColumns) FROM events WHERE id = $1", Self.binds(eventId))
                            )
                        ).first
                    }
                }
            }
            var busy = false
            if answered == nil, request.exclusive, request.dropletId != 0 {
                // The droplet's row is the turnstile: replicas creating exclusive events for it take turns.
                for try await _ in try await context.read(
                    "SELECT id FROM droplets WHERE id = \(request.dropletId) FOR UPDATE")
                {}
                for try await found in try await context.read(
                    """
                    SELECT EXISTS (SELECT 1 FROM events WHERE droplet_id = \(request.dropletId)
                    AND status NOT IN (\(Harpoon_V1_Event.Status.completed.rawValue), \(Harpoon_V1_Event.Status.errored.rawValue)))
                    """
                ).decode(Bool.self) {
                    busy = found
                }
            }
            if case .existing(let event) = try HarpoonRules.createEvent(request, answered: answered, dropletBusy: busy)
            {
                return event
            }
            let now = self.clock.now()
            let (template, destination) = HarpoonRules.newEvent(
                request, region: region, hypervisorId: hypervisorId, origin: origin, now: now)
            let (event, _) = try await self.insertEvent(
                context, template, now: now, destination: destination, notBefore: 0)
            if !key.isEmpty {
                try await context.write("UPDATE idempotency SET event_id = \(event.id) WHERE key = \(key)")
            }
            return event
        }
    }

    package func event(id: Int64) async throws -> Harpoon_V1_Event? {
        try await read { connection, logger in
            try await Self.events(
                connection.query(
                    Self.query("SELECT \(Self.eventColumns) FROM events WHERE id = $1", Self.binds(id)), logger: logger)
            ).first
        }
    }

    package func eventsWithDroplets(ids: [Int64]) async throws -> [Int64: (Harpoon_V1_Event, Harpoon_V1_Droplet?)] {
        guard !ids.isEmpty else { return [:] }
        let pairs = try await read { connection, logger -> [(Harpoon_V1_Event, Harpoon_V1_Droplet?)] in
            var binds = PostgresBindings()
            binds.append(ids)
            let events = try await Self.events(connection, logger, EventsByID.self, binds)
            let dropletIds = Array(Set(events.map(\.dropletId)))
            var droplets: [Int64: Harpoon_V1_Droplet] = [:]
            if !dropletIds.isEmpty {
                for droplet in try await Self.droplets(
                    connection.query(
                        Self.query(
                            "SELECT \(Self.dropletColumns) FROM droplets WHERE id = ANY($1)", Self.binds(dropletIds)),
                        logger: logger
                    ))
                {
                    droplets[droplet.id] = droplet
                }
            }
            return events.map { ($0, droplets[$0.dropletId]) }
        }
        var result: [Int64: (Harpoon_V1_Event, Harpoon_V1_Droplet?)] = [:]
        for (event, droplet) in pairs { result[event.id] = (event, droplet) }
        return result
    }

    package func events(
        _ filter: EventFilter, limit: Int, afterID: Int64, offset: Int
    ) async throws -> Page<Harpoon_V1_Event> {
        var conditions: [String] = []
        var binds = PostgresBindings()
        if let dropletId = filter.dropletId {
            binds.append(dropletId)
            conditions.append("droplet_id = $\(binds.count)")
        }
        if let customer = filter.customer {
            binds.append(customer)
            conditions.append("customer = $\(binds.count)")
        }
        if let type = filter.type {
            binds.append(type)
            conditions.append("type = $\(binds.count)")
        }
        if let status = filter.status {
            binds.append(status.rawValue)
            conditions.append("status = $\(binds.count)")
        }
        if !filter.types.isEmpty {
            binds.append(filter.types)
            conditions.append("type = ANY($\(binds.count))")
        }
        return try await page(
            table: "events", columns: Self.eventColumns,
            condition: conditions.isEmpty ? "TRUE" : conditions.joined(separator: " AND "),
            binds: binds, limit: limit, afterID: afterID, offset: offset, decode: Self.events
        )
    }

    package func hosted(
        hypervisorIds: [String]
    ) async throws -> [String: (droplets: [Harpoon_V1_Droplet], maintenance: String)] {
        guard !hypervisorIds.isEmpty else { return [:] }
        let (droplets, maintenance) = try await read { connection, logger -> ([Harpoon_V1_Droplet], [(String, Data)]) in
            let droplets = try await Self.droplets(
                connection.query(
                    Self.query(
                        "SELECT \(Self.dropletColumns) FROM droplets WHERE status IN (1, 2) AND hypervisor_id = ANY($1) ORDER BY id",
                        Self.binds(hypervisorIds)
                    ), logger: logger))
            var maintenance: [(String, Data)] = []
            for try await row in try await connection.query(
                Self.query(
                    "SELECT hypervisor_id, payload FROM events WHERE type = 'maintenance' AND hypervisor_id = ANY($1) ORDER BY id",
                    Self.binds(hypervisorIds)
                ), logger: logger
            ).decode((String, Data).self) {
                maintenance.append(row)
            }
            return (droplets, maintenance)
        }
        var hosted: [String: (droplets: [Harpoon_V1_Droplet], maintenance: String)] = [:]
        for id in hypervisorIds { hosted[id] = ([], "") }
        for droplet in droplets { hosted[droplet.hypervisorId]?.droplets.append(droplet) }
        // Later rows win: the latest maintenance of each.
        for (id, payload) in maintenance { hosted[id]?.maintenance = String(decoding: payload, as: UTF8.self) }
        return hosted
    }

    package func placeAgain(
        eventId: Int64, refusedBy hypervisorId: String, reason: String, maxRefusals: Int
    ) async throws -> Harpoon_V1_Event {
        try await writer.write(locking: [eventId]) { context in
            guard let current = try await Self.lockedEvent(context, id: eventId) else {
                throw HarpoonError.eventNotFound(eventId)
            }
            let now = self.clock.now()
            switch try HarpoonRules.placeAgain(
                current, refusedBy: hypervisorId, reason: reason, maxRefusals: maxRefusals, now: now)
            {
            case .unchanged(let event): return event
            case .write(let write): return try await self.apply(write, context, now: now)
            }
        }
    }

    package func placementsInFlight(afterID: Int64, limit: Int) async throws -> [Harpoon_V1_Placement] {
        try await read { connection, logger in
            var placements: [Harpoon_V1_Placement] = []
            // The condition is the partial index's own (placed, delivered, running), so the index answers it.
            for try await row in try await connection.query(
                """
                SELECT events.id, events.droplet_id, events.customer, events.region, events.hypervisor_id, droplets.size
                FROM events JOIN droplets ON droplets.id = events.droplet_id
                WHERE events.type = 'create' AND events.status IN (1, 2, 3) AND events.id > \(afterID)
                ORDER BY events.id LIMIT \(Int64(limit))
                """, logger: logger
            ).decode((Int64, Int64, String, String, String, Data).self) {
                let size: Scheduler_V2_Size
                do { size = try Scheduler_V2_Size(serializedBytes: [UInt8](row.5)) } catch {
                    throw HarpoonError.corrupt("droplet \(row.1): unreadable size")
                }
                placements.append(
                    Harpoon_V1_Placement(
                        eventId: row.0, dropletId: row.1, customer: row.2, region: row.3, hypervisorId: row.4,
                        size: size))
            }
            return placements
        }
    }

    package func updateEvent(
        id: Int64, status: Harpoon_V1_Event.Status, hypervisorId: String?, error: String?, ipv4Address: String?,
        then destination: OutboxDestination?, settling settlement: OutboxSettlement?
    ) async throws -> Harpoon_V1_Event {
        try await writer.write(locking: [id], entries: settlement.map { [$0.entry.id] } ?? []) { context in
            try await self.update(
                context, id: id, status: status, hypervisorId: hypervisorId, error: error, ipv4Address: ipv4Address,
                then: destination, settling: settlement
            )
        }
    }

    package func updateEvents(_ updates: [EventUpdate]) async -> [Result<Harpoon_V1_Event, any Error>] {
        await writer.writeEach(
            updates.map { update in
                (
                    locking: [update.id],
                    body: { context in
                        try await self.update(
                            context, id: update.id, status: update.status, hypervisorId: update.hypervisorId,
                            error: update.error,
                            ipv4Address: update.ipv4Address, then: nil, settling: nil
                        )
                    }
                )
            })
    }

    private func update(
        _ context: PostgresWriteContext, id: Int64, status: Harpoon_V1_Event.Status, hypervisorId: String?,
        error: String?, ipv4Address: String?,
        then destination: OutboxDestination?, settling settlement: OutboxSettlement?
    ) async throws -> Harpoon_V1_Event {
        guard let current = try await Self.lockedEvent(context, id: id) else { throw HarpoonError.eventNotFound(id) }
        // The rule first, on whether the entry is still there (read, locked): a refusal then writes nothing, so it
        // does not spoil the transaction it shares with other writes.
        var existed: Bool?
        if let settlement {
            existed = context.locked.entryExists(settlement.entry.id)
            if existed == nil {
                existed = false
                for try await _ in try await context.read(
                    "SELECT id FROM outbox WHERE id = \(settlement.entry.id) FOR UPDATE")
                { existed = true }
            }
        }
        let now = clock.now()
        let decision = try HarpoonRules.update(
            current, to: status, hypervisorId: hypervisorId, error: error, ipv4Address: ipv4Address, then: destination,
            settledEntryExisted: existed, now: now
        )
        if let settlement, existed == true { _ = try await Self.settle(settlement, context) }
        switch decision {
        case .unchanged(let event): return event
        case .write(let write): return try await apply(write, context, now: now)
        }
    }

    package func changes(after cursor: Int64, customer: String?, limit: Int) async throws -> [Harpoon_V1_Event] {
        try await read { connection, logger in
            // Only committed rows have cursors, given in commit order: nothing below the last one seen can appear later.
            var binds = PostgresBindings()
            binds.append(cursor)
            if let customer {
                binds.append(customer)
                binds.append(Int64(limit))
                return try await Self.events(connection, logger, CustomerChangesAfter.self, binds)
            }
            binds.append(Int64(limit))
            return try await Self.events(connection, logger, ChangesAfter.self, binds)
        }
    }

    // MARK: Outbox

    private static func outboxEntries(_ rows: PostgresRowSequence) async throws -> [OutboxEntry] {
        var entries: [OutboxEntry] = []
        for try await row in rows.decode((Int64, Int64, String, Int, Double).self) {
            guard let destination = OutboxDestination(rawValue: row.2) else { continue }
            entries.append(
                OutboxEntry(id: row.0, eventId: row.1, destination: destination, attempts: row.3, notBefore: row.4))
        }
        return entries
    }

    /// Claims the entries due: each is this replica's for ``outboxLease`` (other replicas skip it, or wait for its row
    /// lock and then find it no longer due); one it does not settle in time becomes due to every replica again.
    package func dueOutbox(now: Double, limit: Int) async throws -> [OutboxEntry] {
        try await pool.transaction { connection in
            try await Self.outboxEntries(
                connection.query(
                    """
                    WITH due AS (
                        SELECT id, not_before FROM outbox WHERE not_before <= \(now) ORDER BY id LIMIT \(Int64(limit)) FOR UPDATE SKIP LOCKED
                    )
                    UPDATE outbox SET not_before = \(now + outboxLease) FROM due WHERE outbox.id = due.id
                    RETURNING outbox.id, outbox.event_id, outbox.destination, outbox.attempts, due.not_before
                    """, logger: pool.logger)
            ).sorted { $0.id < $1.id }
        }
    }

    package func nextOutboxTime(after now: Double) async throws -> Double? {
        try await read { connection, logger in
            var next: Double?
            for try await value in try await connection.query(
                "SELECT min(not_before) FROM outbox WHERE not_before > \(now)", logger: logger
            )
            .decode(Double?.self) {
                next = value
            }
            return next
        }
    }

    /// Settles an outbox entry; returns whether the entry was still there. One the transaction locked up front is
    /// settled with the transaction's other settlements, in one statement.
    private static func settle(_ settlement: OutboxSettlement, _ context: PostgresWriteContext) async throws -> Bool {
        if let exists = context.locked.entryExists(settlement.entry.id) {
            if exists { try await context.deferSettlement(settlement) }
            return exists
        }
        let rows: PostgresRowSequence
        switch settlement {
        case .acknowledge(let entry):
            rows = try await context.write("DELETE FROM outbox WHERE id = \(entry.id) RETURNING id")
        case .reschedule(let entry, let until):
            rows = try await context.write(
                "UPDATE outbox SET not_before = \(until) WHERE id = \(entry.id) RETURNING id")
        case .handOver(let entry, let destination, let until):
            rows = try await context.write(
                "UPDATE outbox SET destination = \(destination.rawValue), not_before = \(until), attempts = 0 WHERE id = \(entry.id) RETURNING id"
            )
        }
        var existed = false
        for try await _ in rows { existed = true }
        return existed
    }

    package func settle(_ settlement: OutboxSettlement) async throws {
        _ = try await writer.write(entries: [settlement.entry.id]) { context in
            try await Self.settle(settlement, context)
        }
    }

    package func acknowledge(_ entry: OutboxEntry) async throws {
        try await settle(.acknowledge(entry))
    }

    package func postpone(_ entry: OutboxEntry, until: Double) async throws {
        _ = try await writer.write { context -> Bool in
            try await context.write(
                "UPDATE outbox SET attempts = attempts + 1, not_before = \(until) WHERE id = \(entry.id)")
            return true
        }
    }

    package func reschedule(_ entry: OutboxEntry, until: Double) async throws {
        try await settle(.reschedule(entry, until: until))
    }

    package func unfinishedEvents() async throws -> [UnfinishedEvents] {
        try await read { connection, logger in
            var counts: [UnfinishedEvents] = []
            for try await (type, status, count) in try await connection.query(
                "SELECT type, status, count(*)::int8 FROM events WHERE status IN (0, 1, 2, 3) GROUP BY type, status ORDER BY type, status",
                logger: logger
            ).decode((String, Int32, Int64).self) {
                counts.append(
                    UnfinishedEvents(type: type, status: Harpoon_V1_Event.Status(rawValue: status), count: Int(count)))
            }
            return counts
        }
    }

    package func outboxSummary() async throws -> (entries: Int, oldestCreatedAt: Double?) {
        try await read { connection, logger in
            var summary: (entries: Int, oldestCreatedAt: Double?) = (0, nil)
            for try await (count, oldest) in try await connection.query(
                "SELECT count(*)::int8, min(events.created_at) FROM outbox JOIN events ON events.id = outbox.event_id",
                logger: logger
            ).decode((Int64, Double?).self) {
                summary = (Int(count), oldest)
            }
            return summary
        }
    }

    package func history(eventId: Int64) async throws -> [EventTransition] {
        try await read { connection, logger in
            var steps: [EventTransition] = []
            for try await (status, hypervisorId, reason, at, by) in try await connection.query(
                "SELECT status, hypervisor_id, reason, at, actor FROM event_history WHERE event_id = \(eventId) ORDER BY id",
                logger: logger
            ).decode((Int32, String, String, Double, String).self) {
                steps.append(
                    EventTransition(
                        status: Harpoon_V1_Event.Status(rawValue: status), hypervisorId: hypervisorId, reason: reason,
                        at: at, by: by))
            }
            return steps
        }
    }

    package func outboxCount() async throws -> Int {
        try await read { connection, logger in
            var count = 0
            for try await value in try await connection.query("SELECT count(*)::int8 FROM outbox", logger: logger)
                .decode(Int64.self)
            { count = Int(value) }
            return count
        }
    }
}

/// A droplet creation as its write returns it: found by its idempotency key, or deferred to the transaction's
/// statement of creations, whose ids it gets at commit.
private enum DropletCreation: CommitResolved {
    case existing(CreatedDroplet)
    case deferred(slot: Int, DeferredWrites.Creation)

    func resolved(_ outcome: CommitOutcome) throws -> CreatedDroplet {
        switch self {
        case .existing(var created):
            // Its first creation may share this transaction: its cursor is given at commit.
            created.event = created.event.resolved(outcome)
            return created
        case .deferred(let slot, let creation):
            var rows = creation.rows
            // The commit follows the statement that gave the ids, so a committed creation has them.
            guard let ids = outcome.created[slot] else {
                throw HarpoonError.corrupt("a creation committed without its ids")
            }
            rows.droplet.id = ids.dropletId
            rows.event.id = ids.eventId
            rows.event.dropletId = ids.dropletId
            let event = rows.event.resolved(outcome)
            let entry = OutboxEntry(
                id: ids.entryId, eventId: ids.eventId, destination: .scheduler, attempts: 0,
                notBefore: creation.notBefore)
            return CreatedDroplet(droplet: rows.droplet, event: event, entry: entry)
        }
    }
}

extension OutboxSettlement {
    /// The entry settled.
    var entry: OutboxEntry {
        switch self {
        case .acknowledge(let entry), .reschedule(let entry, _), .handOver(let entry, _, _): entry
        }
    }
}
