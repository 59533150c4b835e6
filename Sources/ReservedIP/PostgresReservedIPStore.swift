internal import Foundation
internal import Logging
internal import PostgresNIO
package import PostgresSupport
package import ReservedIPAPI

/// The reserved-IP database on PostgreSQL, shared by several orchestrator replicas.
///
/// Every transition is one transaction that first takes one advisory lock, so transitions are serialised across
/// every replica as SQLite's single writer serialises them in one process: two requests racing for one IP or one
/// droplet, on any replicas, cannot both pass the checks. (Transitions are customer actions on reserved IPs, a few a
/// second at most: one at a time costs nothing.) Reads take no lock. Like ``SQLiteReservedIPStore`` it has no rules
/// of its own: it reads the facts a rule of ``ReservedIPRules`` needs, asks it, and writes what it decides.
///
/// Each replica runs a ``TransitionDriver``; an action is driven by one at a time, the one holding its claim
/// (``claimAction(_:driver:seconds:)``), which lapses if that replica dies.
package final class PostgresReservedIPStore: ReservedIPStore {
    package let pool: PostgresPool
    package let pools: AddressPools
    /// The advisory lock that serialises transitions ("SHOALRIP").
    private static let transitionLock: Int64 = 0x5348_4F41_4C52_4950

    package static func open(
        _ address: PostgresAddress, pools: AddressPools, connections: Int = 4
    ) async throws -> PostgresReservedIPStore {
        let pool = try await PostgresPool.open(
            address, maximumConnections: connections, applicationName: "reserved-ip", schema: "reserved_ip",
            migrations: migrations
        )
        return PostgresReservedIPStore(pool: pool, pools: pools)
    }

    private init(pool: PostgresPool, pools: AddressPools) {
        self.pool = pool
        self.pools = pools
    }

    package func close() async { await pool.close() }

    package func databaseConnections() async throws -> Int { try await pool.serverConnectionCount() }

    static let migrations: [(version: String, statements: [String])] = [
        (
            "v1",
            [
                """
                CREATE TABLE reserved_ips (
                    ip TEXT PRIMARY KEY,
                    number BIGINT NOT NULL,
                    customer TEXT NOT NULL,
                    region TEXT NOT NULL,
                    project_id TEXT NOT NULL,
                    droplet_id BIGINT NOT NULL DEFAULT 0,
                    action_id BIGINT,
                    released BOOLEAN NOT NULL DEFAULT FALSE,
                    created_at DOUBLE PRECISION NOT NULL,
                    seq BIGINT NOT NULL
                )
                """,
                "CREATE INDEX reserved_ips_by_customer ON reserved_ips (customer, released, seq)",
                "CREATE INDEX reserved_ips_by_region ON reserved_ips (region)",
                "CREATE INDEX reserved_ips_by_droplet ON reserved_ips (droplet_id)",
                """
                CREATE TABLE actions (
                    id BIGSERIAL PRIMARY KEY,
                    type TEXT NOT NULL,
                    status INT NOT NULL,
                    ip TEXT NOT NULL,
                    reservation BIGINT NOT NULL,
                    customer TEXT NOT NULL,
                    region TEXT NOT NULL,
                    project_id TEXT NOT NULL,
                    droplet_id BIGINT NOT NULL,
                    from_droplet_id BIGINT NOT NULL DEFAULT 0,
                    phase INT NOT NULL DEFAULT 0,
                    event_id BIGINT NOT NULL DEFAULT 0,
                    releasing BOOLEAN NOT NULL DEFAULT FALSE,
                    started_at DOUBLE PRECISION NOT NULL,
                    completed_at DOUBLE PRECISION,
                    error TEXT NOT NULL DEFAULT '',
                    driver TEXT NOT NULL DEFAULT '',
                    driver_until DOUBLE PRECISION NOT NULL DEFAULT 0
                )
                """,
                "CREATE INDEX actions_by_customer ON actions (customer, id)",
                "CREATE INDEX actions_by_ip ON actions (ip, reservation, id)",
                "CREATE INDEX actions_in_progress ON actions (status, droplet_id, from_droplet_id)",
                """
                CREATE TABLE idempotency (
                    customer TEXT NOT NULL, key TEXT NOT NULL, ip TEXT NOT NULL, action_id BIGINT NOT NULL, PRIMARY KEY (customer, key)
                )
                """,
                """
                CREATE TABLE billing (
                    id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, ip TEXT NOT NULL, region TEXT NOT NULL, kind TEXT NOT NULL,
                    action_id BIGINT NOT NULL, droplet_id BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL
                )
                """,
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
            ]
        )
    ]

    // MARK: Rows

    private static let ipColumns = "ip, customer, region, project_id, droplet_id, action_id, created_at, seq"
    private static let actionColumns =
        "id, type, status, ip, customer, region, project_id, droplet_id, from_droplet_id, phase, event_id, releasing, started_at, completed_at, error"

    private typealias IPRow = (String, String, String, String, Int64, Int64?, Double, Int64)
    private typealias ActionRow = (
        Int64, String, Int32, String, String, String, String, Int64, Int64, Int32, Int64, Bool, Double, Double?, String
    )

    private static func reservedIP(_ row: IPRow) -> Reservedip_V1_ReservedIP {
        Reservedip_V1_ReservedIP(
            ip: row.0, customer: row.1, region: row.2, projectId: row.3, dropletId: row.4, locked: row.5 != nil,
            createdAt: Google_Protobuf_Timestamp(secondsSince1970: row.6)
        )
    }

    private static func actionState(_ row: ActionRow) -> ActionState {
        var action = Reservedip_V1_Action(
            id: row.0, type: row.1, status: Reservedip_V1_Action.Status(rawValue: row.2), ip: row.3, customer: row.4,
            region: row.5,
            dropletId: row.7, startedAt: Google_Protobuf_Timestamp(secondsSince1970: row.12), error: row.14,
            projectId: row.6
        )
        if let completed = row.13 { action.completedAt = Google_Protobuf_Timestamp(secondsSince1970: completed) }
        return ActionState(action: action, fromDropletId: row.8, phase: Int(row.9), eventId: row.10, releasing: row.11)
    }

    private static func ips(_ rows: PostgresRowSequence) async throws -> [Reservedip_V1_ReservedIP] {
        var result: [Reservedip_V1_ReservedIP] = []
        for try await row in rows.decode(IPRow.self) { result.append(reservedIP(row)) }
        return result
    }

    private static func actions(_ rows: PostgresRowSequence) async throws -> [ActionState] {
        var result: [ActionState] = []
        for try await row in rows.decode(ActionRow.self) { result.append(actionState(row)) }
        return result
    }

    private static func now() -> Double { Date().timeIntervalSince1970 }

    /// One transition: a transaction that first takes the transition lock.
    private func transition<T: Sendable>(_ body: @escaping @Sendable (Connection) async throws -> T) async throws -> T {
        let logger = pool.logger
        return try await pool.transaction { connection in
            let db = Connection(connection: connection, logger: logger)
            try await db.run("SELECT pg_advisory_xact_lock(\(Self.transitionLock))")
            return try await body(db)
        }
    }

    private func read<T: Sendable>(_ body: @escaping @Sendable (Connection) async throws -> T) async throws -> T {
        let logger = pool.logger
        return try await pool.client.withConnection { connection in
            try await body(Connection(connection: connection, logger: logger))
        }
    }

    /// A connection with its logger, and the statements every transition shares.
    private struct Connection {
        let connection: PostgresConnection
        let logger: Logger

        func rows(_ query: PostgresQuery) async throws -> PostgresRowSequence {
            try await connection.query(query, logger: logger)
        }

        /// Runs a statement, reading whatever it returns.
        func run(_ query: PostgresQuery) async throws {
            for try await _ in try await connection.query(query, logger: logger) {}
        }

        func one<T: PostgresDecodable & Sendable>(_ query: PostgresQuery, as type: T.Type) async throws -> T? {
            var value: T?
            for try await found in try await connection.query(query, logger: logger).decode(T.self) where value == nil {
                value = found
            }
            return value
        }

        func ip(_ address: String, customer: String) async throws -> Reservedip_V1_ReservedIP? {
            try await PostgresReservedIPStore.ips(
                rows(
                    "SELECT \(unescaped: PostgresReservedIPStore.ipColumns) FROM reserved_ips WHERE ip = \(address) AND customer = \(customer) AND NOT released"
                )
            ).first
        }

        func action(id: Int64) async throws -> ActionState? {
            try await PostgresReservedIPStore.actions(
                rows("SELECT \(unescaped: PostgresReservedIPStore.actionColumns) FROM actions WHERE id = \(id)")
            ).first
        }

        func remembered(_ key: String, customer: String) async throws -> (ip: String, actionId: Int64)? {
            guard !key.isEmpty else { return nil }
            var found: (String, Int64)?
            for try await row in try await rows(
                "SELECT ip, action_id FROM idempotency WHERE customer = \(customer) AND key = \(key)"
            ).decode((String, Int64).self) {
                found = row
            }
            return found
        }

        func remember(_ key: String, customer: String, ip: String, actionId: Int64) async throws {
            guard !key.isEmpty else { return }
            try await run(
                "INSERT INTO idempotency (customer, key, ip, action_id) VALUES (\(customer), \(key), \(ip), \(actionId))"
            )
        }

        func dropletBusy(_ dropletId: Int64) async throws -> Bool {
            try await one(
                """
                SELECT EXISTS (SELECT 1 FROM actions WHERE status = \(Reservedip_V1_Action.Status.inProgress.rawValue)
                AND (droplet_id = \(dropletId) OR from_droplet_id = \(dropletId)))
                """, as: Bool.self) ?? false
        }

        /// The IP (other than `except`) already on the droplet, if any.
        func ipOnDroplet(_ dropletId: Int64, except: String) async throws -> String? {
            try await one(
                "SELECT ip FROM reserved_ips WHERE droplet_id = \(dropletId) AND ip != \(except) LIMIT 1",
                as: String.self)
        }

        func insertAction(_ new: NewAction, ip: Reservedip_V1_ReservedIP) async throws -> Int64 {
            let id =
                try await one(
                    """
                    INSERT INTO actions (type, status, ip, reservation, customer, region, project_id, droplet_id, from_droplet_id, releasing, started_at)
                    VALUES (\(new.type), \(Reservedip_V1_Action.Status.inProgress.rawValue), \(ip.ip), (SELECT seq FROM reserved_ips WHERE ip = \(ip.ip)),
                            \(ip.customer), \(ip.region), \(ip.projectId), \(new.dropletId), \(new.fromDropletId), \(new.releasing), \(PostgresReservedIPStore.now()))
                    RETURNING id
                    """, as: Int64.self) ?? 0
            try await run("UPDATE reserved_ips SET action_id = \(id) WHERE ip = \(ip.ip)")
            return id
        }

        func bill(ip: Reservedip_V1_ReservedIP, kind: String, actionId: Int64, dropletId: Int64) async throws {
            try await run(
                """
                INSERT INTO billing (customer, ip, region, kind, action_id, droplet_id, at)
                VALUES (\(ip.customer), \(ip.ip), \(ip.region), \(kind), \(actionId), \(dropletId), \(PostgresReservedIPStore.now()))
                """)
        }

        func allocate(
            pools: AddressPools, customer: String, region: String, projectId: String
        ) async throws -> Reservedip_V1_ReservedIP {
            var used = Set<UInt32>()
            for try await number in try await rows("SELECT number FROM reserved_ips WHERE region = \(region)").decode(
                Int64.self)
            {
                used.insert(UInt32(truncatingIfNeeded: number))
            }
            // Addresses are handed out in turn, so a released one is not at once someone else's.
            let cursorKey = "last_allocated/\(region)"
            let last = try await one("SELECT value FROM meta WHERE key = \(cursorKey)", as: Int64.self).map {
                UInt32(truncatingIfNeeded: $0)
            }
            let number = try ReservedIPRules.allocate(in: region, pools: pools, after: last, used: used)
            let ip = IPv4.format(number)
            let created = PostgresReservedIPStore.now()
            try await run(
                "INSERT INTO meta (key, value) VALUES (\(cursorKey), \(Int64(number))) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            )
            let seq =
                try await one(
                    """
                    INSERT INTO meta (key, value) VALUES ('reservations', 1) ON CONFLICT (key) DO UPDATE SET value = meta.value + 1 RETURNING value
                    """, as: Int64.self) ?? 1
            try await run(
                """
                INSERT INTO reserved_ips (ip, number, customer, region, project_id, created_at, seq)
                VALUES (\(ip), \(Int64(number)), \(customer), \(region), \(projectId), \(created), \(seq))
                """)
            return Reservedip_V1_ReservedIP(
                ip: ip, customer: customer, region: region, projectId: projectId,
                createdAt: Google_Protobuf_Timestamp(secondsSince1970: created)
            )
        }
    }

    // MARK: Transitions

    package func reserve(
        customer: String, region: String, projectId: String, key: String
    ) async throws -> Reservedip_V1_ReservedIP {
        try await transition { [pools] db in
            if let (ip, _) = try await db.remembered(key, customer: customer) {
                guard let existing = try await db.ip(ip, customer: customer) else {
                    throw ReservedIPError.notFound("reserved IP \(ip)")
                }
                return existing
            }
            let ip = try await db.allocate(pools: pools, customer: customer, region: region, projectId: projectId)
            try await db.bill(ip: ip, kind: "reserve", actionId: 0, dropletId: 0)
            try await db.remember(key, customer: customer, ip: ip.ip, actionId: 0)
            return ip
        }
    }

    package func reserveToDroplet(
        customer: String, region: String, projectId: String, dropletId: Int64, key: String
    ) async throws -> (Reservedip_V1_ReservedIP, ActionState, isNew: Bool) {
        try await transition { [pools] db in
            if let (ip, actionId) = try await db.remembered(key, customer: customer),
                let action = try await db.action(id: actionId)
            {
                let row = try await Self.ips(
                    db.rows("SELECT \(unescaped: Self.ipColumns) FROM reserved_ips WHERE ip = \(ip)")
                ).first
                return (row ?? Reservedip_V1_ReservedIP(ip: ip), action, false)
            }
            let new = try ReservedIPRules.reserveToDroplet(
                dropletId: dropletId, dropletBusy: try await db.dropletBusy(dropletId),
                ipOnDroplet: try await db.ipOnDroplet(dropletId, except: "")
            )
            var ip = try await db.allocate(pools: pools, customer: customer, region: region, projectId: projectId)
            try await db.bill(ip: ip, kind: "reserve", actionId: 0, dropletId: 0)
            let actionId = try await db.insertAction(new, ip: ip)
            try await db.remember(key, customer: customer, ip: ip.ip, actionId: actionId)
            ip.locked = true
            guard let action = try await db.action(id: actionId) else {
                throw ReservedIPError.corrupt("an action just written cannot be read back")
            }
            return (ip, action, true)
        }
    }

    package func beginAssign(
        customer: String, ip address: String, dropletId: Int64, key: String
    ) async throws -> (ActionState, isNew: Bool) {
        try await transition { db in
            if let (_, actionId) = try await db.remembered(key, customer: customer),
                let action = try await db.action(id: actionId)
            {
                return (action, false)
            }
            let ip = try await db.ip(address, customer: customer)
            var fromDropletBusy = false
            if let ip, ip.dropletId != 0 { fromDropletBusy = try await db.dropletBusy(ip.dropletId) }
            let new = try ReservedIPRules.assign(
                ip, address: address, to: dropletId, dropletBusy: try await db.dropletBusy(dropletId),
                fromDropletBusy: fromDropletBusy,
                ipOnDroplet: try await db.ipOnDroplet(dropletId, except: address)
            )
            guard let ip else { throw ReservedIPError.notFound("reserved IP \(address)") }
            let actionId = try await db.insertAction(new, ip: ip)
            try await db.remember(key, customer: customer, ip: ip.ip, actionId: actionId)
            guard let action = try await db.action(id: actionId) else {
                throw ReservedIPError.corrupt("an action just written cannot be read back")
            }
            return (action, true)
        }
    }

    package func beginUnassign(
        customer: String, ip address: String, key: String
    ) async throws -> (ActionState, isNew: Bool) {
        try await transition { db in
            if let (_, actionId) = try await db.remembered(key, customer: customer),
                let action = try await db.action(id: actionId)
            {
                return (action, false)
            }
            let ip = try await db.ip(address, customer: customer)
            var dropletBusy = false
            if let ip, ip.dropletId != 0 { dropletBusy = try await db.dropletBusy(ip.dropletId) }
            let new = try ReservedIPRules.unassign(ip, address: address, dropletBusy: dropletBusy)
            guard let ip else { throw ReservedIPError.notFound("reserved IP \(address)") }
            let actionId = try await db.insertAction(new, ip: ip)
            try await db.remember(key, customer: customer, ip: ip.ip, actionId: actionId)
            guard let action = try await db.action(id: actionId) else {
                throw ReservedIPError.corrupt("an action just written cannot be read back")
            }
            return (action, true)
        }
    }

    package func release(customer: String, ip address: String, key: String) async throws -> ActionState? {
        try await transition { db in
            if let (_, actionId) = try await db.remembered(key, customer: customer) {
                return try await db.action(id: actionId)
            }
            let found = try await db.ip(address, customer: customer)
            let decision = try ReservedIPRules.release(found, address: address)
            guard let ip = found else { throw ReservedIPError.notFound("reserved IP \(address)") }
            try await db.bill(ip: ip, kind: "release", actionId: 0, dropletId: ip.dropletId)
            guard case .unassignFirst(let new) = decision else {
                try await db.run("DELETE FROM reserved_ips WHERE ip = \(ip.ip)")
                try await db.remember(key, customer: customer, ip: ip.ip, actionId: 0)
                return nil
            }
            try await db.run("UPDATE reserved_ips SET released = TRUE WHERE ip = \(ip.ip)")
            let actionId = try await db.insertAction(new, ip: ip)
            try await db.remember(key, customer: customer, ip: ip.ip, actionId: actionId)
            return try await db.action(id: actionId)
        }
    }

    package func abandon(_ state: ActionState, reservation: Bool) async throws {
        try await transition { db in
            let (id, ip) = (state.action.id, state.action.ip)
            try await db.run("DELETE FROM actions WHERE id = \(id)")
            try await db.run("DELETE FROM idempotency WHERE action_id = \(id)")
            if reservation {
                try await db.run("DELETE FROM reserved_ips WHERE ip = \(ip)")
                try await db.run(
                    "DELETE FROM billing WHERE ip = \(ip) AND kind = 'reserve' AND id = (SELECT max(id) FROM billing WHERE ip = \(ip))"
                )
            } else {
                try await db.run("UPDATE reserved_ips SET action_id = NULL WHERE ip = \(ip) AND action_id = \(id)")
            }
        }
    }

    package func recordEvent(actionId: Int64, phase: Int, eventId: Int64) async throws {
        try await transition { db in
            try await db.run(
                """
                UPDATE actions SET event_id = \(eventId)
                WHERE id = \(actionId) AND phase = \(Int32(phase)) AND status = \(Reservedip_V1_Action.Status.inProgress.rawValue)
                """)
        }
    }

    @discardableResult
    package func finishStep(actionId: Int64, phase: Int, completed: Bool, error: String) async throws -> ActionState? {
        try await transition { db in
            guard let state = try await db.action(id: actionId) else { return nil }
            guard let end = ReservedIPRules.finishStep(state, phase: phase, completed: completed, error: error) else {
                return state
            }  // already applied
            let now = Self.now()
            let ip = state.action.ip
            if let dropletId = end.ipDropletId {
                try await db.run("UPDATE reserved_ips SET droplet_id = \(dropletId) WHERE ip = \(ip)")
            }
            switch end.next {
            case .step(let next):
                try await db.run("UPDATE actions SET phase = \(Int32(next)), event_id = 0 WHERE id = \(actionId)")
            case .completed(let billing):
                try await db.run(
                    "UPDATE actions SET status = \(Reservedip_V1_Action.Status.completed.rawValue), completed_at = \(now) WHERE id = \(actionId)"
                )
                if let row = try await Self.ips(
                    db.rows("SELECT \(unescaped: Self.ipColumns) FROM reserved_ips WHERE ip = \(ip)")
                ).first {
                    try await db.bill(ip: row, kind: billing, actionId: actionId, dropletId: state.action.dropletId)
                }
            case .errored(let error):
                try await db.run(
                    """
                    UPDATE actions SET status = \(Reservedip_V1_Action.Status.errored.rawValue), completed_at = \(now), error = \(error) WHERE id = \(actionId)
                    """)
            }
            if end.unlocks {
                try await db.run(
                    "UPDATE reserved_ips SET action_id = NULL WHERE ip = \(ip) AND action_id = \(actionId)")
            }
            if end.deletesReleasedIP {
                try await db.run("DELETE FROM reserved_ips WHERE ip = \(ip) AND released")
            }
            return try await db.action(id: actionId) ?? state
        }
    }

    package func dropletDestroyed(_ dropletId: Int64) async throws {
        try await transition { db in
            try await db.run(
                "UPDATE reserved_ips SET droplet_id = 0 WHERE droplet_id = \(dropletId) AND action_id IS NULL")
            try await db.run("DELETE FROM reserved_ips WHERE droplet_id = 0 AND released AND action_id IS NULL")
        }
    }

    // MARK: Reads

    package func reservedIP(_ ip: String, customer: String) async throws -> Reservedip_V1_ReservedIP? {
        try await read { db in try await db.ip(ip, customer: customer) }
    }

    package func reservedIPs(
        customer: String, limit: Int, offset: Int
    ) async throws -> (items: [Reservedip_V1_ReservedIP], total: Int) {
        try await read { db in
            let total =
                try await db.one(
                    "SELECT count(*)::int8 FROM reserved_ips WHERE customer = \(customer) AND NOT released",
                    as: Int64.self) ?? 0
            let items = try await Self.ips(
                db.rows(
                    """
                    SELECT \(unescaped: Self.ipColumns) FROM reserved_ips WHERE customer = \(customer) AND NOT released
                    ORDER BY seq LIMIT \(Int64(limit)) OFFSET \(Int64(offset))
                    """))
            return (items, Int(total))
        }
    }

    package func action(id: Int64, customer: String) async throws -> ActionState? {
        try await read { db in try await db.action(id: id).flatMap { $0.action.customer == customer ? $0 : nil } }
    }

    package func action(id: Int64, customer: String, ip: String) async throws -> ActionState? {
        try await read { db in
            guard
                let seq = try await db.one(
                    "SELECT seq FROM reserved_ips WHERE ip = \(ip) AND customer = \(customer) AND NOT released",
                    as: Int64.self
                ), try await db.one("SELECT reservation FROM actions WHERE id = \(id)", as: Int64.self) == seq
            else { return nil }
            return try await db.action(id: id).flatMap { $0.action.customer == customer ? $0 : nil }
        }
    }

    package func actions(
        customer: String, ip: String?, limit: Int, offset: Int
    ) async throws -> (items: [Reservedip_V1_Action], total: Int) {
        try await read { db in
            var condition = "customer = $1"
            var binds = PostgresBindings()
            binds.append(customer)
            if let ip {
                binds.append(ip)
                condition +=
                    " AND ip = $2 AND reservation = (SELECT seq FROM reserved_ips WHERE ip = $2 AND customer = $1 AND NOT released)"
            }
            let total =
                try await db.one(
                    PostgresQuery(unsafeSQL: "SELECT count(*)::int8 FROM actions WHERE \(condition)", binds: binds),
                    as: Int64.self) ?? 0
            var pageBinds = binds
            pageBinds.append(Int64(limit))
            pageBinds.append(Int64(offset))
            let items = try await Self.actions(
                db.rows(
                    PostgresQuery(
                        unsafeSQL:
                            "SELECT \(Self.actionColumns) FROM actions WHERE \(condition) ORDER BY id LIMIT $\(binds.count + 1) OFFSET $\(binds.count + 2)",
                        binds: pageBinds
                    ))
            ).map(\.action)
            return (items, Int(total))
        }
    }

    package func actionsInProgress() async throws -> [ActionState] {
        try await read { db in
            try await Self.actions(
                db.rows(
                    "SELECT \(unescaped: Self.actionColumns) FROM actions WHERE status = \(Reservedip_V1_Action.Status.inProgress.rawValue) ORDER BY id"
                ))
        }
    }

    package func actionsInProgressCount() async throws -> Int {
        try await read { db in
            Int(
                try await db.one(
                    "SELECT count(*)::int8 FROM actions WHERE status = \(Reservedip_V1_Action.Status.inProgress.rawValue)",
                    as: Int64.self) ?? 0)
        }
    }

    package func actionState(id: Int64) async throws -> ActionState? {
        try await read { db in try await db.action(id: id) }
    }

    package func billing(
        customer: String
    ) async throws -> [(kind: String, ip: String, dropletId: Int64, actionId: Int64)] {
        try await read { db in
            var records: [(kind: String, ip: String, dropletId: Int64, actionId: Int64)] = []
            for try await row in try await db.rows(
                "SELECT kind, ip, droplet_id, action_id FROM billing WHERE customer = \(customer) ORDER BY id"
            )
            .decode((String, String, Int64, Int64).self) {
                records.append(row)
            }
            return records
        }
    }

    package func watchCursor() async throws -> Int64 {
        try await read { db in
            try await db.one("SELECT value FROM meta WHERE key = 'watch_cursor'", as: Int64.self) ?? 0
        }
    }

    package func saveWatchCursor(_ cursor: Int64) async throws {
        try await read { db in
            try await db.run(
                """
                INSERT INTO meta (key, value) VALUES ('watch_cursor', \(cursor)) ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, excluded.value)
                """)
        }
    }

    // MARK: Drivers

    package func claimAction(_ id: Int64, driver: String, seconds: Double) async throws -> Bool {
        try await read { db in
            let now = Self.now()
            return try await db.one(
                """
                UPDATE actions SET driver = \(driver), driver_until = \(now + seconds)
                WHERE id = \(id) AND (driver = \(driver) OR driver = '' OR driver_until < \(now))
                RETURNING id
                """, as: Int64.self) != nil
        }
    }

    package func releaseAction(_ id: Int64, driver: String) async throws {
        try await read { db in
            try await db.run("UPDATE actions SET driver = '', driver_until = 0 WHERE id = \(id) AND driver = \(driver)")
        }
    }

    /// Where replicas hear that another gave its claims up.
    static let releasesChannel = "shoal_reserved_ip_released"

    package func releaseClaims(driver: String) async throws {
        try await pool.transaction { connection in
            try await connection.query(
                "UPDATE actions SET driver = '', driver_until = 0 WHERE driver = \(driver)", logger: pool.logger)
            try await connection.query("SELECT pg_notify(\(Self.releasesChannel), \(driver))", logger: pool.logger)
        }
    }

    package func listenForReleases(_ released: @escaping @Sendable () -> Void) async {
        await pool.listen(channel: Self.releasesChannel) { _ in released() }
    }
}
