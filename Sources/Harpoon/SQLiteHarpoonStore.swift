internal import Foundation
internal import GRDB
package import HarpoonAPI
package import SQLiteSupport
internal import Synchronization

/// The events database in one SQLite file, in WAL mode, through a small pool: one writer and a few readers.
///
/// The store has no rules of its own: inside each transaction it reads the rows a rule of ``HarpoonRules`` needs,
/// asks it, and writes what it decides (``apply(_:_:now:)``). The connection count is fixed by configuration; it does
/// not grow with the fleet.
package final class SQLiteHarpoonStore: HarpoonStore {
    private let database: SQLiteDatabase
    private let pool: DatabasePool
    private let writer: WriteCoalescer
    private let clock: any WallClock

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    package init(
        path: String, readers: Int = 4, durability: SQLiteDurability = .full, clock: any WallClock = SystemClock()
    ) throws {
        self.clock = clock
        database = try SQLiteDatabase(path: path, readers: readers, migrator: Self.migrator, durability: durability)
        pool = database.pool
        let last = try pool.read { db in try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(cursor), 0) FROM events") ?? 0
        }
        lastCursor = Mutex(last)
        let recent = RecentChanges(floor: last)
        self.recent = recent
        writer = WriteCoalescer(
            pool: pool, transactionEnded: { recent.transactionEnded(committed: $0) },
            savepoint: { recent.savepoint(rolledBack: $0) }
        )
    }

    /// The latest committed changes, for watchers that keep up.
    private let recent: RecentChanges

    package func databaseConnections() async throws -> Int { database.connectionCount }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE droplets (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        customer TEXT NOT NULL,
                        name TEXT NOT NULL,
                        region TEXT NOT NULL,
                        size BLOB NOT NULL,
                        image TEXT NOT NULL,
                        status INTEGER NOT NULL,
                        hypervisor_id TEXT NOT NULL DEFAULT '',
                        ipv4_address TEXT NOT NULL DEFAULT '',
                        error TEXT NOT NULL DEFAULT '',
                        created_at REAL NOT NULL
                    );
                    CREATE INDEX droplets_by_customer ON droplets(customer, region, id);
                    CREATE TABLE events (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        type TEXT NOT NULL,
                        droplet_id INTEGER NOT NULL,
                        customer TEXT NOT NULL,
                        region TEXT NOT NULL,
                        hypervisor_id TEXT NOT NULL DEFAULT '',
                        status INTEGER NOT NULL,
                        payload BLOB NOT NULL,
                        error TEXT NOT NULL DEFAULT '',
                        created_at REAL NOT NULL,
                        updated_at REAL NOT NULL,
                        cursor INTEGER NOT NULL
                    );
                    CREATE INDEX events_by_droplet ON events(droplet_id, id);
                    CREATE INDEX events_by_customer ON events(customer, id);
                    CREATE UNIQUE INDEX events_by_cursor ON events(cursor);
                    CREATE TABLE outbox (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        event_id INTEGER NOT NULL,
                        destination TEXT NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        not_before REAL NOT NULL DEFAULT 0
                    );
                    CREATE INDEX outbox_by_time ON outbox(not_before, id);
                    CREATE TABLE idempotency (
                        key TEXT PRIMARY KEY,
                        droplet_id INTEGER NOT NULL,
                        event_id INTEGER NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v2: outbox by event") { db in
            // A terminal event deletes its outbox entries by event id.
            try db.execute(sql: "CREATE INDEX outbox_by_event ON outbox(event_id)")
        }
        migrator.registerMigration("v3: placements in flight") { db in
            // A scheduler that starts lists the creates placed and not finished: a few rows among all events ever.
            try db.execute(
                sql: "CREATE INDEX events_placed_creates ON events(id) WHERE type = 'create' AND status IN (1, 2, 3)")
        }
        migrator.registerMigration("v4: maintenance by hypervisor") { db in
            // An agent that starts learns its latest maintenance. (Its droplets are found by a scan, batched: an index
            // on the droplets' hypervisor would cost every creation a write, to serve the rare agent that starts.)
            try db.execute(
                sql: "CREATE INDEX events_maintenance ON events(hypervisor_id, id) WHERE type = 'maintenance'")
        }
        migrator.registerMigration("v5: refusals") { db in
            // How often hypervisors refused a create for lack of room (each time it is placed again, a few times at most).
            try db.execute(sql: "ALTER TABLE events ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0")
        }
        migrator.registerMigration("v6: event history") { db in
            try db.execute(
                sql: """
                    CREATE TABLE event_history (
                        id INTEGER PRIMARY KEY,
                        event_id INTEGER NOT NULL,
                        status INTEGER NOT NULL,
                        hypervisor_id TEXT NOT NULL,
                        reason TEXT NOT NULL,
                        at REAL NOT NULL,
                        actor TEXT NOT NULL
                    );
                    CREATE INDEX event_history_by_event ON event_history (event_id, id);
                    """)
        }
        migrator.registerMigration("v7: unfinished events") { db in
            // Only events in flight are in it: it stays small however many have finished.
            try db.execute(sql: "CREATE INDEX events_unfinished ON events (type, status) WHERE status IN (0, 1, 2, 3)")
        }
        migrator.registerMigration("v8: request context") { db in
            try db.execute(sql: "ALTER TABLE events ADD COLUMN request_id TEXT NOT NULL DEFAULT ''")
            try db.execute(sql: "ALTER TABLE events ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''")
        }
        return migrator
    }

    // MARK: Rows

    private static let dropletColumns =
        "id, customer, name, region, size, image, status, hypervisor_id, ipv4_address, error, created_at"
    private static let eventColumns =
        "id, type, droplet_id, customer, region, hypervisor_id, status, payload, error, created_at, updated_at, cursor, refusals, request_id, traceparent"

    private static func timestamp(_ seconds: Double) -> Google_Protobuf_Timestamp { HarpoonRules.timestamp(seconds) }

    // Rows are read by position, in the order of `dropletColumns` / `eventColumns` (GRDB's lookups by name compare
    // names case-insensitively on every access, which showed in profiles).
    private static func droplet(_ row: Row) throws -> Harpoon_V1_Droplet {
        let sizeBytes: Data = row[4]
        return Harpoon_V1_Droplet(
            id: row[0], customer: row[1], name: row[2], region: row[3],
            size: try Scheduler_V2_Size(serializedBytes: [UInt8](sizeBytes)), image: row[5],
            status: Harpoon_V1_Droplet.Status(rawValue: row[6]), hypervisorId: row[7],
            ipv4Address: row[8], createdAt: timestamp(row[10]), error: row[9]
        )
    }

    private static func event(_ row: Row) -> Harpoon_V1_Event {
        let payload: Data = row[7]
        return Harpoon_V1_Event(
            id: row[0], type: row[1], dropletId: row[2], customer: row[3], region: row[4],
            hypervisorId: row[5], status: Harpoon_V1_Event.Status(rawValue: row[6]), payload: [UInt8](payload),
            error: row[8], createdAt: timestamp(row[9]), updatedAt: timestamp(row[10]), cursor: row[11],
            refusals: row[12],
            requestId: row[13], traceparent: row[14]
        )
    }

    /// The last change cursor handed out, read from the table when the store opens. Only the writer's transactions
    /// take cursors, one at a time, so a counter in memory gives the same increasing sequence as `MAX(cursor) + 1`
    /// without a query per write. A transaction that rolls back leaves a gap, which watchers do not mind (they ask
    /// for what comes after a cursor).
    private let lastCursor: Mutex<Int64>

    private func nextCursor() -> Int64 {
        lastCursor.withLock { last in
            last += 1
            return last
        }
    }

    // Rows are decoded straight from the statement, each column read once by position (a copied `Row` would box
    // every value first; GRDB's lookups by name compare names case-insensitively on every access).
    // A row is the statement's current row: the cursor (which resets the statement when it goes) must outlive it.
    private static func rows<T>(
        _ statement: Statement, _ arguments: StatementArguments, _ decode: (Row) throws -> T
    ) throws -> [T] {
        let cursor = try Row.fetchCursor(statement, arguments: arguments)
        return try withExtendedLifetime(cursor) {
            var result: [T] = []
            while let row = try cursor.next() { result.append(try decode(row)) }
            return result
        }
    }

    private static func firstRow<T>(
        _ statement: Statement, _ arguments: StatementArguments, _ decode: (Row) throws -> T
    ) throws -> T? {
        let cursor = try Row.fetchCursor(statement, arguments: arguments)
        return try withExtendedLifetime(cursor) { try cursor.next().map(decode) }
    }

    private static func fetchEvent(_ db: Database, id: Int64) throws -> Harpoon_V1_Event? {
        try firstRow(db.cachedStatement(sql: "SELECT \(eventColumns) FROM events WHERE id = ?"), [id], event)
    }

    private static func fetchDroplet(_ db: Database, id: Int64) throws -> Harpoon_V1_Droplet? {
        try firstRow(db.cachedStatement(sql: "SELECT \(dropletColumns) FROM droplets WHERE id = ?"), [id], droplet)
    }

    /// Inserts a new event (its id and cursor given here) and its first outbox entry; returns the event as written.
    private func insertEvent(
        _ db: Database, _ template: Harpoon_V1_Event, now: Double, destination: OutboxDestination
    ) throws -> (event: Harpoon_V1_Event, entryId: Int64) {
        let cursor = nextCursor()
        try db.cachedStatement(
            sql: """
                INSERT INTO events (type, droplet_id, customer, region, hypervisor_id, status, payload, created_at, updated_at, cursor, request_id, traceparent)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(
            binding: {
                $0.bind(1, template.type)
                $0.bind(2, template.dropletId)
                $0.bind(3, template.customer)
                $0.bind(4, template.region)
                $0.bind(5, template.hypervisorId)
                $0.bind(6, Int64(template.status.rawValue))
                $0.bind(7, template.payload)
                $0.bind(8, now)
                $0.bind(9, now)
                $0.bind(10, cursor)
                $0.bind(11, template.requestId)
                $0.bind(12, template.traceparent)
            }
        )
        var event = template
        event.id = db.lastInsertedRowID
        event.cursor = cursor
        try Self.record(HarpoonRules.created(event, now: now), of: event.id, db)
        try db.cachedStatement(sql: "INSERT INTO outbox (event_id, destination) VALUES (?, ?)").execute {
            $0.bind(1, event.id)
            $0.bind(2, destination.rawValue)
        }
        return (event, db.lastInsertedRowID)
    }

    /// Adds a step to an event's history.
    private static func record(_ step: EventTransition, of eventId: Int64, _ db: Database) throws {
        try db.cachedStatement(
            sql:
                "INSERT INTO event_history (event_id, status, hypervisor_id, reason, at, actor) VALUES (?, ?, ?, ?, ?, ?)"
        ).execute(binding: {
            $0.bind(1, eventId)
            $0.bind(2, Int64(step.status.rawValue))
            $0.bind(3, step.hypervisorId)
            $0.bind(4, step.reason)
            $0.bind(5, step.at)
            $0.bind(6, step.by)
        })
    }

    /// Writes what a rule decided for an event, giving it its change cursor; returns the event as written.
    private func apply(_ write: EventWrite, _ db: Database, now: Double) throws -> Harpoon_V1_Event {
        let cursor = nextCursor()
        let event = write.event
        try db.cachedStatement(
            sql:
                "UPDATE events SET status = ?, hypervisor_id = ?, error = ?, refusals = ?, updated_at = ?, cursor = ? WHERE id = ?"
        ).execute(
            binding: {
                $0.bind(1, Int64(event.status.rawValue))
                $0.bind(2, event.hypervisorId)
                $0.bind(3, event.error)
                $0.bind(4, Int64(event.refusals))
                $0.bind(5, now)
                $0.bind(6, cursor)
                $0.bind(7, event.id)
            }
        )
        try Self.record(write.transition, of: event.id, db)
        if write.clearsOutbox {
            try db.cachedStatement(sql: "DELETE FROM outbox WHERE event_id = ?").execute { $0.bind(1, event.id) }
        }
        if let entry = write.enqueue {
            try db.cachedStatement(sql: "INSERT INTO outbox (event_id, destination, not_before) VALUES (?, ?, ?)")
                .execute(arguments: [event.id, entry.destination.rawValue, entry.notBefore])
        }
        if let droplet = write.droplet {
            let status: Int64? = droplet.status.map { Int64($0.rawValue) }
            try db.cachedStatement(
                sql: """
                    UPDATE droplets SET status = COALESCE(?, status), hypervisor_id = COALESCE(?, hypervisor_id),
                    ipv4_address = COALESCE(?, ipv4_address), error = COALESCE(?, error) WHERE id = ?
                    """
            ).execute(
                binding: {
                    $0.bind(1, status)
                    $0.bind(2, droplet.hypervisorId)
                    $0.bind(3, droplet.ipv4Address)
                    $0.bind(4, droplet.error)
                    $0.bind(5, droplet.dropletId)
                }
            )
        }
        var written = event
        written.cursor = cursor
        recent.stage(written)
        return written
    }

    /// One page of `table` rows matching `condition`, by id after `afterID` and `offset` more, with the total that match.
    private static func page<Item: Sendable>(
        _ db: Database, table: String, columns: String, condition: String, arguments: StatementArguments,
        limit: Int, afterID: Int64, offset: Int, decode: (Row) throws -> Item
    ) throws -> Page<Item> where Item: Identified {
        let total =
            try Int.fetchOne(
                db.cachedStatement(sql: "SELECT COUNT(*) FROM \(table) WHERE \(condition)"), arguments: arguments) ?? 0
        var pageArguments = arguments
        _ = pageArguments.append(contentsOf: [afterID, limit + 1, max(0, offset)])
        // One row past the page says whether another page follows.
        let rows = try Self.rows(
            db.cachedStatement(
                sql: "SELECT \(columns) FROM \(table) WHERE \(condition) AND id > ? ORDER BY id LIMIT ? OFFSET ?"),
            pageArguments, decode
        )
        let items = Array(rows.prefix(limit))
        return Page(items: items, total: total, nextAfterID: rows.count > limit ? items.last?.id : nil)
    }

    // MARK: Droplets

    package func createDropletQueued(
        _ request: Harpoon_V1_CreateDropletRequest, origin: EventOrigin
    ) async throws -> CreatedDroplet {
        try await writer.write { db in
            var answered: (droplet: Harpoon_V1_Droplet?, event: Harpoon_V1_Event?)?
            if !request.idempotencyKey.isEmpty,
                let row = try Row.fetchOne(
                    db.cachedStatement(sql: "SELECT droplet_id, event_id FROM idempotency WHERE key = ?"),
                    arguments: [request.idempotencyKey])
            {
                answered = (
                    try Self.fetchDroplet(db, id: row["droplet_id"]), try Self.fetchEvent(db, id: row["event_id"])
                )
            }
            if case .existing(let found) = try HarpoonRules.createDroplet(
                key: request.idempotencyKey, answered: answered)
            {
                return CreatedDroplet(droplet: found.droplet, event: found.event, entry: nil)
            }
            let now = self.clock.now()
            var rows = HarpoonRules.newDroplet(request, origin: origin, now: now)
            try db.cachedStatement(
                sql:
                    "INSERT INTO droplets (customer, name, region, size, image, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ).execute {
                $0.bind(1, rows.droplet.customer)
                $0.bind(2, rows.droplet.name)
                $0.bind(3, rows.droplet.region)
                $0.bind(4, rows.event.payload)  // the size, serialized
                $0.bind(5, rows.droplet.image)
                $0.bind(6, Int64(rows.droplet.status.rawValue))
                $0.bind(7, now)
            }
            rows.droplet.id = db.lastInsertedRowID
            rows.event.dropletId = rows.droplet.id
            let (event, entryId) = try self.insertEvent(db, rows.event, now: now, destination: .scheduler)
            if !request.idempotencyKey.isEmpty {
                try db.cachedStatement(
                    sql: "INSERT INTO idempotency (key, droplet_id, event_id) VALUES (?, ?, ?)"
                ).execute(
                    arguments: [request.idempotencyKey, rows.droplet.id, event.id]
                )
            }
            // The rows as just written, without reading them back.
            self.recent.stage(event)
            let entry = OutboxEntry(id: entryId, eventId: event.id, destination: .scheduler, attempts: 0, notBefore: 0)
            return CreatedDroplet(droplet: rows.droplet, event: event, entry: entry)
        }
    }

    package func droplet(id: Int64) async throws -> Harpoon_V1_Droplet? {
        try database.readNow { db in try Self.fetchDroplet(db, id: id) }
    }

    package func droplets(
        customer: String, region: String?, name: String?, limit: Int, afterID: Int64, offset: Int
    ) async throws -> Page<Harpoon_V1_Droplet> {
        try await pool.read { db in
            var condition = "customer = ? AND status != ?"
            var arguments: StatementArguments = [customer, Harpoon_V1_Droplet.Status.deleted.rawValue]
            if let region {
                condition += " AND region = ?"
                _ = arguments.append(contentsOf: [region])
            }
            if let name {
                condition += " AND name = ? COLLATE NOCASE"
                _ = arguments.append(contentsOf: [name])
            }
            return try Self.page(
                db, table: "droplets", columns: Self.dropletColumns, condition: condition, arguments: arguments,
                limit: limit, afterID: afterID, offset: offset, decode: Self.droplet
            )
        }
    }

    // MARK: Events

    package func createEvent(
        _ request: Harpoon_V1_CreateEventRequest, region: String, hypervisorId: String, origin: EventOrigin
    ) async throws -> Harpoon_V1_Event {
        try await writer.write { db in
            var answered: Harpoon_V1_Event?
            if !request.idempotencyKey.isEmpty,
                let eventId = try Int64.fetchOne(
                    db.cachedStatement(sql: "SELECT event_id FROM idempotency WHERE key = ?"),
                    arguments: [request.idempotencyKey])
            {
                answered = try Self.fetchEvent(db, id: eventId)
            }
            var busy = false
            if answered == nil, request.exclusive, request.dropletId != 0 {
                busy =
                    try Bool.fetchOne(
                        db.cachedStatement(
                            sql: "SELECT EXISTS (SELECT 1 FROM events WHERE droplet_id = ? AND status NOT IN (?, ?))"),
                        arguments: [
                            request.dropletId, Harpoon_V1_Event.Status.completed.rawValue,
                            Harpoon_V1_Event.Status.errored.rawValue,
                        ]
                    ) == true
            }
            if case .existing(let event) = try HarpoonRules.createEvent(request, answered: answered, dropletBusy: busy)
            {
                return event
            }
            let now = self.clock.now()
            let (template, destination) = HarpoonRules.newEvent(
                request, region: region, hypervisorId: hypervisorId, origin: origin, now: now)
            let (event, _) = try self.insertEvent(db, template, now: now, destination: destination)
            if !request.idempotencyKey.isEmpty {
                try db.cachedStatement(
                    sql: "INSERT INTO idempotency (key, droplet_id, event_id) VALUES (?, ?, ?)"
                ).execute(
                    arguments: [request.idempotencyKey, request.dropletId, event.id]
                )
            }
            self.recent.stage(event)
            return event
        }
    }

    package func event(id: Int64) async throws -> Harpoon_V1_Event? {
        try database.readNow { db in try Self.fetchEvent(db, id: id) }
    }

    /// `prefix (?, ?, …)` with room for `count` ids, rounded up to a power of two and prepared once per connection
    /// for each: a few statements serve every batch size. ``inArguments(_:)`` fills the spare places.
    private static func inStatement(_ db: Database, _ prefix: String, count: Int) throws -> Statement {
        let places = max(1, count).nextPowerOfTwo
        return try db.cachedStatement(sql: "\(prefix) (\(Array(repeating: "?", count: places).joined(separator: ",")))")
    }

    /// `ids`, with the last one repeated up to the next power of two (a repeated id in `IN` matches nothing more).
    private static func inArguments(_ ids: [Int64]) -> StatementArguments {
        guard let last = ids.last else { return StatementArguments() }
        return StatementArguments(ids + Array(repeating: last, count: max(1, ids.count).nextPowerOfTwo - ids.count))
    }

    package func eventsWithDroplets(ids: [Int64]) async throws -> [Int64: (Harpoon_V1_Event, Harpoon_V1_Droplet?)] {
        guard !ids.isEmpty else { return [:] }
        return try await pool.read { db in
            let events = try Self.rows(
                Self.inStatement(db, "SELECT \(Self.eventColumns) FROM events WHERE id IN", count: ids.count),
                Self.inArguments(ids), Self.event
            )
            let dropletIds = Array(Set(events.map(\.dropletId)))
            var droplets: [Int64: Harpoon_V1_Droplet] = [:]
            if !dropletIds.isEmpty {
                let statement = try Self.inStatement(
                    db, "SELECT \(Self.dropletColumns) FROM droplets WHERE id IN", count: dropletIds.count)
                for droplet in try Self.rows(statement, Self.inArguments(dropletIds), Self.droplet) {
                    droplets[droplet.id] = droplet
                }
            }
            var result: [Int64: (Harpoon_V1_Event, Harpoon_V1_Droplet?)] = [:]
            for event in events { result[event.id] = (event, droplets[event.dropletId]) }
            return result
        }
    }

    package func events(
        _ filter: EventFilter, limit: Int, afterID: Int64, offset: Int
    ) async throws -> Page<Harpoon_V1_Event> {
        try await pool.read { db in
            var conditions: [String] = []
            var arguments = StatementArguments()
            if let dropletId = filter.dropletId {
                conditions.append("droplet_id = ?")
                _ = arguments.append(contentsOf: [dropletId])
            }
            if let customer = filter.customer {
                conditions.append("customer = ?")
                _ = arguments.append(contentsOf: [customer])
            }
            if let type = filter.type {
                conditions.append("type = ?")
                _ = arguments.append(contentsOf: [type])
            }
            if let status = filter.status {
                conditions.append("status = ?")
                _ = arguments.append(contentsOf: [status.rawValue])
            }
            if !filter.types.isEmpty {
                conditions.append(
                    "type IN (\(Array(repeating: "?", count: filter.types.count).joined(separator: ",")))")
                _ = arguments.append(contentsOf: StatementArguments(filter.types))
            }
            let condition = conditions.isEmpty ? "1" : conditions.joined(separator: " AND ")
            return try Self.page(
                db, table: "events", columns: Self.eventColumns, condition: condition, arguments: arguments,
                limit: limit, afterID: afterID, offset: offset, decode: Self.event
            )
        }
    }

    package func hosted(
        hypervisorIds: [String]
    ) async throws -> [String: (droplets: [Harpoon_V1_Droplet], maintenance: String)] {
        guard !hypervisorIds.isEmpty else { return [:] }
        return try await pool.read { db in
            var hosted: [String: (droplets: [Harpoon_V1_Droplet], maintenance: String)] = [:]
            for id in hypervisorIds { hosted[id] = ([], "") }
            let arguments = StatementArguments(hypervisorIds)
            let marks = Array(repeating: "?", count: hypervisorIds.count).joined(separator: ", ")
            // One pass over the droplets for the whole batch.
            for droplet in try Self.rows(
                db.makeStatement(
                    sql:
                        "SELECT \(Self.dropletColumns) FROM droplets WHERE status IN (1, 2) AND hypervisor_id IN (\(marks)) ORDER BY id"
                ),
                arguments, Self.droplet
            ) {
                hosted[droplet.hypervisorId]?.droplets.append(droplet)
            }
            // The latest maintenance event of each (the partial index's own condition); later rows win.
            for (id, payload) in try Self.rows(
                db.makeStatement(
                    sql:
                        "SELECT hypervisor_id, payload FROM events WHERE type = 'maintenance' AND hypervisor_id IN (\(marks)) ORDER BY id"
                ),
                arguments, { row -> (String, Data) in (row[0], row[1]) }
            ) {
                hosted[id]?.maintenance = String(decoding: payload, as: UTF8.self)
            }
            return hosted
        }
    }

    package func placeAgain(
        eventId: Int64, refusedBy hypervisorId: String, reason: String, maxRefusals: Int
    ) async throws -> Harpoon_V1_Event {
        try await writer.write { db in
            guard let current = try Self.fetchEvent(db, id: eventId) else { throw HarpoonError.eventNotFound(eventId) }
            let now = self.clock.now()
            switch try HarpoonRules.placeAgain(
                current, refusedBy: hypervisorId, reason: reason, maxRefusals: maxRefusals, now: now)
            {
            case .unchanged(let event): return event
            case .write(let write): return try self.apply(write, db, now: now)
            }
        }
    }

    package func placementsInFlight(afterID: Int64, limit: Int) async throws -> [Harpoon_V1_Placement] {
        try await pool.read { db in
            // The condition is the partial index's own (placed, delivered, running), so the index answers it.
            try Self.rows(
                db.cachedStatement(
                    sql: """
                        SELECT events.id, events.droplet_id, events.customer, events.region, events.hypervisor_id, droplets.size
                        FROM events JOIN droplets ON droplets.id = events.droplet_id
                        WHERE events.type = 'create' AND events.status IN (1, 2, 3) AND events.id > ?
                        ORDER BY events.id LIMIT ?
                        """),
                [afterID, limit]
            ) { row in
                let size: Data = row[5]
                return Harpoon_V1_Placement(
                    eventId: row[0], dropletId: row[1], customer: row[2], region: row[3], hypervisorId: row[4],
                    size: try Scheduler_V2_Size(serializedBytes: [UInt8](size))
                )
            }
        }
    }

    package func updateEvent(
        id: Int64, status: Harpoon_V1_Event.Status, hypervisorId: String?, error: String?, ipv4Address: String?,
        then destination: OutboxDestination?, settling settlement: OutboxSettlement?
    ) async throws -> Harpoon_V1_Event {
        try await writer.write { db in
            try self.update(
                db, id: id, status: status, hypervisorId: hypervisorId, error: error, ipv4Address: ipv4Address,
                then: destination, settling: settlement
            )
        }
    }

    package func updateEvents(_ updates: [EventUpdate]) async -> [Result<Harpoon_V1_Event, any Error>] {
        await writer.writeEach(
            updates.map { update in
                { db in
                    try self.update(
                        db, id: update.id, status: update.status, hypervisorId: update.hypervisorId,
                        error: update.error,
                        ipv4Address: update.ipv4Address, then: nil, settling: nil
                    )
                }
            })
    }

    private func update(
        _ db: Database, id: Int64, status: Harpoon_V1_Event.Status, hypervisorId: String?, error: String?,
        ipv4Address: String?,
        then destination: OutboxDestination?, settling settlement: OutboxSettlement?
    ) throws -> Harpoon_V1_Event {
        guard let current = try Self.fetchEvent(db, id: id) else { throw HarpoonError.eventNotFound(id) }
        let existed = try settlement.map { try Self.settle($0, db) }
        let now = clock.now()
        switch try HarpoonRules.update(
            current, to: status, hypervisorId: hypervisorId, error: error, ipv4Address: ipv4Address, then: destination,
            settledEntryExisted: existed, now: now
        ) {
        case .unchanged(let event): return event
        case .write(let write): return try apply(write, db, now: now)
        }
    }

    package func changes(after cursor: Int64, customer: String?, limit: Int) async throws -> [Harpoon_V1_Event] {
        if let recent = recent.changes(after: cursor, customer: customer, limit: limit) { return recent }
        return try await pool.read { db in
            if let customer {
                return try Self.rows(
                    db.cachedStatement(
                        sql:
                            "SELECT \(Self.eventColumns) FROM events WHERE cursor > ? AND customer = ? ORDER BY cursor LIMIT ?"
                    ),
                    [cursor, customer, limit], Self.event
                )
            }
            return try Self.rows(
                db.cachedStatement(
                    sql: "SELECT \(Self.eventColumns) FROM events WHERE cursor > ? ORDER BY cursor LIMIT ?"),
                [cursor, limit], Self.event
            )
        }
    }

    // MARK: Outbox

    private static func outboxEntry(_ row: Row) -> OutboxEntry? {
        // By position: id, event_id, destination, attempts, not_before.
        guard let destination = OutboxDestination(rawValue: row[2]) else { return nil }
        return OutboxEntry(id: row[0], eventId: row[1], destination: destination, attempts: row[3], notBefore: row[4])
    }

    package func dueOutbox(now: Double, limit: Int) async throws -> [OutboxEntry] {
        try await pool.read { db in
            try Self.rows(
                db.cachedStatement(
                    sql:
                        "SELECT id, event_id, destination, attempts, not_before FROM outbox WHERE not_before <= ? ORDER BY id LIMIT ?"
                ),
                [now, limit], Self.outboxEntry
            ).compactMap { $0 }
        }
    }

    package func nextOutboxTime(after now: Double) async throws -> Double? {
        try await pool.read { db in
            try Double.fetchOne(
                db.cachedStatement(sql: "SELECT MIN(not_before) FROM outbox WHERE not_before > ?"), arguments: [now])
        }
    }

    /// Settles an outbox entry; returns whether the entry was still there.
    @discardableResult
    private static func settle(_ settlement: OutboxSettlement, _ db: Database) throws -> Bool {
        switch settlement {
        case .acknowledge(let entry):
            try db.cachedStatement(sql: "DELETE FROM outbox WHERE id = ?").execute(arguments: [entry.id])
        case .reschedule(let entry, let until):
            try db.cachedStatement(sql: "UPDATE outbox SET not_before = ? WHERE id = ?").execute(arguments: [
                until, entry.id,
            ])
        case .handOver(let entry, let destination, let until):
            try db.cachedStatement(sql: "UPDATE outbox SET destination = ?, not_before = ?, attempts = 0 WHERE id = ?")
                .execute(arguments: [destination.rawValue, until, entry.id])
        }
        return db.changesCount > 0
    }

    package func settle(_ settlement: OutboxSettlement) async throws {
        _ = try await writer.write { db in try Self.settle(settlement, db) }
    }

    package func acknowledge(_ entry: OutboxEntry) async throws {
        try await settle(.acknowledge(entry))
    }

    package func postpone(_ entry: OutboxEntry, until: Double) async throws {
        try await writer.write { db in
            try db.cachedStatement(sql: "UPDATE outbox SET attempts = attempts + 1, not_before = ? WHERE id = ?")
                .execute(arguments: [until, entry.id])
        }
    }

    package func reschedule(_ entry: OutboxEntry, until: Double) async throws {
        try await settle(.reschedule(entry, until: until))
    }

    package func outboxCount() async throws -> Int {
        try await pool.read { db in try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM outbox")) ?? 0 }
    }

    package func unfinishedEvents() async throws -> [UnfinishedEvents] {
        try await pool.read { db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql:
                        "SELECT type, status, COUNT(*) FROM events WHERE status IN (0, 1, 2, 3) GROUP BY type, status ORDER BY type, status"
                )
            ).map { row in
                UnfinishedEvents(type: row[0], status: Harpoon_V1_Event.Status(rawValue: row[1]), count: row[2])
            }
        }
    }

    package func releaseOutbox(_ entryIds: [Int64]) async throws {}

    package func outboxSummary() async throws -> (entries: Int, oldestCreatedAt: Double?) {
        try await pool.read { db in
            let row = try Row.fetchOne(
                db.cachedStatement(
                    sql:
                        "SELECT COUNT(*), MIN(events.created_at) FROM outbox JOIN events ON events.id = outbox.event_id"
                )
            )
            return (row?[0] ?? 0, row?[1])
        }
    }

    package func history(eventId: Int64) async throws -> [EventTransition] {
        try await pool.read { db in
            try Row.fetchAll(
                db.cachedStatement(
                    sql:
                        "SELECT status, hypervisor_id, reason, at, actor FROM event_history WHERE event_id = ? ORDER BY id"
                ),
                arguments: [eventId]
            ).map { row in
                EventTransition(
                    status: Harpoon_V1_Event.Status(rawValue: row[0]), hypervisorId: row[1], reason: row[2], at: row[3],
                    by: row[4]
                )
            }
        }
    }
}

/// A row type paged by its integer id.
protocol Identified { var id: Int64 { get } }
extension Harpoon_V1_Droplet: Identified {}
extension Harpoon_V1_Event: Identified {}

extension Int {
    /// The smallest power of two at least `self` (`self` > 0).
    fileprivate var nextPowerOfTwo: Int { self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount) }
}
