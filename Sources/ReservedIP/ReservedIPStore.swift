internal import Foundation
internal import GRDB
package import ReservedIPAPI
package import SQLiteSupport

/// One step of an action: a Harpoon event on a droplet's hypervisor.
package struct ActionStep: Sendable, Hashable {
    package var type: String
    package var dropletId: Int64
}

/// An action with what the driver needs to run it.
package struct ActionState: Sendable {
    package var action: Reservedip_V1_Action
    /// The droplet an assign takes the IP from first (a reassign); 0 if none.
    package var fromDropletId: Int64
    /// The index of the step in progress in `steps`.
    package var phase: Int
    /// The Harpoon event of the current step; 0 before it is created.
    package var eventId: Int64
    /// The action unassigns a released IP: when it ends, the address goes back to the pool.
    package var releasing: Bool

    /// The Harpoon events the action runs, in order: a reassign leaves the old droplet, then joins the new one.
    package var steps: [ActionStep] {
        switch action.type {
        case "assign_ip":
            (fromDropletId != 0 ? [ActionStep(type: "unassign_ip", dropletId: fromDropletId)] : [])
                + [ActionStep(type: "assign_ip", dropletId: action.dropletId)]
        default:
            [ActionStep(type: "unassign_ip", dropletId: action.dropletId)]
        }
    }

    package var currentStep: ActionStep? { phase < steps.count ? steps[phase] : nil }

    /// The idempotency key of the current step's Harpoon event: a retried or re-driven step never creates two.
    package var eventKey: String { "reserved-ip/action/\(action.id)/step/\(phase)" }
}

/// The reserved-IP database: pools' allocations, reserved IPs, actions, billing records. ``SQLiteReservedIPStore``
/// (one process, the embedded default) or ``PostgresReservedIPStore`` (several replicas on one database).
///
/// Every transition is one transaction, and transitions are serialised, so two requests racing for one IP or one
/// droplet cannot both pass the checks: the second sees the first's lock. A store has no rules of its own: it reads
/// the facts a rule of ``ReservedIPRules`` needs, asks it, and writes what it decides.
package protocol ReservedIPStore: Sendable {
    var pools: AddressPools { get }
    /// Connections open to the database: this process's handles on the SQLite file; on PostgreSQL, as the server
    /// counts them (every replica's).
    func databaseConnections() async throws -> Int
    /// Reserves a free address of `region` to the customer (no action): billed as a reservation.
    func reserve(
        customer: String, region: String, projectId: String, key: String
    ) async throws -> Reservedip_V1_ReservedIP
    /// Reserves an address in the droplet's region and starts assigning it to the droplet (already checked to be the
    /// customer's, active, in `region`). Returns the IP (locked, not yet assigned), its action, and whether both are new.
    func reserveToDroplet(
        customer: String, region: String, projectId: String, dropletId: Int64, key: String
    ) async throws
        -> (Reservedip_V1_ReservedIP, ActionState, isNew: Bool)
    /// Starts assigning the IP to a droplet (checked to be the customer's, active, in the IP's region), leaving the
    /// droplet it is on first if any. Refuses while the IP or either droplet has an action in flight.
    func beginAssign(
        customer: String, ip address: String, dropletId: Int64, key: String
    ) async throws -> (ActionState, isNew: Bool)
    /// Starts unassigning the IP from its droplet.
    func beginUnassign(customer: String, ip address: String, key: String) async throws -> (ActionState, isNew: Bool)
    /// Removes the IP from the customer's account at once. An unassigned one goes straight back to the pool; an
    /// assigned one gets an unassign action (returned) and goes back when that ends. Refused while an action is in flight.
    func release(customer: String, ip address: String, key: String) async throws -> ActionState?
    /// Forgets an action whose first step was refused before anything happened (the droplet had another event in
    /// flight): the action, its idempotency key, and for a reservation to a droplet the reservation itself.
    func abandon(_ state: ActionState, reservation: Bool) async throws
    /// Records the Harpoon event of the action's current step.
    func recordEvent(actionId: Int64, phase: Int, eventId: Int64) async throws
    /// The current step ended. Completed: the IP leaves or joins the step's droplet, and the action moves to its next
    /// step or completes (unlocking the IP and writing its billing record). Errored: the action errors with `error`,
    /// the IP is unlocked where it is. Returns the action as it now is.
    @discardableResult
    func finishStep(actionId: Int64, phase: Int, completed: Bool, error: String) async throws -> ActionState?
    /// A droplet was destroyed: an IP on it is no longer assigned (unless an action on the IP is deciding that).
    func dropletDestroyed(_ dropletId: Int64) async throws
    func reservedIP(_ ip: String, customer: String) async throws -> Reservedip_V1_ReservedIP?
    func reservedIPs(
        customer: String, limit: Int, offset: Int
    ) async throws -> (items: [Reservedip_V1_ReservedIP], total: Int)
    func action(id: Int64, customer: String) async throws -> ActionState?
    /// The action if it belongs to the address's current reservation (the per-IP actions path).
    func action(id: Int64, customer: String, ip: String) async throws -> ActionState?
    func actions(
        customer: String, ip: String?, limit: Int, offset: Int
    ) async throws -> (items: [Reservedip_V1_Action], total: Int)
    func actionsInProgress() async throws -> [ActionState]
    func actionsInProgressCount() async throws -> Int
    func actionState(id: Int64) async throws -> ActionState?
    /// Billing records, oldest first: (kind, ip, droplet, action).
    func billing(customer: String) async throws -> [(kind: String, ip: String, dropletId: Int64, actionId: Int64)]
    /// Where the watch of Harpoon's event stream stopped, so a restart resumes there.
    func watchCursor() async throws -> Int64
    func saveWatchCursor(_ cursor: Int64) async throws
    /// Claims the action for `driver` for `seconds`: true if no other driver holds it (or its claim lapsed). Replicas
    /// each run a driver; an action is driven by one at a time.
    func claimAction(_ id: Int64, driver: String, seconds: Double) async throws -> Bool
    /// Gives the claim up (the action ended, or the driver stops).
    func releaseAction(_ id: Int64, driver: String) async throws
    /// Gives up every claim of `driver` (its replica is stopping) and tells the other replicas
    /// (``listenForReleases(_:)``), so they take the actions over at once rather than when the claims lapse.
    func releaseClaims(driver: String) async throws
    /// Calls `released` whenever another replica gave its claims up (and once at the start), for as long as the
    /// calling task runs; returns at once where one process owns the database.
    func listenForReleases(_ released: @escaping @Sendable () -> Void) async
}

/// The reserved-IP database in one SQLite file (WAL), owned by one process: its writes are serialised by SQLite's
/// single writer, and its one driver needs no claims.
package final class SQLiteReservedIPStore: ReservedIPStore {
    private let database: SQLiteDatabase
    private let pool: DatabasePool
    package let pools: AddressPools

    package init(path: String, pools: AddressPools, readers: Int = 2, durability: SQLiteDurability = .full) throws {
        database = try SQLiteDatabase(path: path, readers: readers, migrator: Self.migrator, durability: durability)
        pool = database.pool
        self.pools = pools
    }

    package func databaseConnections() async throws -> Int { database.connectionCount }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE reserved_ips (
                        ip TEXT PRIMARY KEY,
                        number INTEGER NOT NULL,
                        customer TEXT NOT NULL,
                        region TEXT NOT NULL,
                        project_id TEXT NOT NULL,
                        droplet_id INTEGER NOT NULL DEFAULT 0,
                        -- the action in progress; NULL when unlocked
                        action_id INTEGER,
                        -- released by its owner: hidden, and the address stays out of the pool until it is unassigned
                        released INTEGER NOT NULL DEFAULT 0,
                        created_at REAL NOT NULL,
                        seq INTEGER NOT NULL
                    );
                    CREATE INDEX reserved_ips_by_customer ON reserved_ips(customer, released, seq);
                    CREATE INDEX reserved_ips_by_region ON reserved_ips(region);
                    CREATE INDEX reserved_ips_by_droplet ON reserved_ips(droplet_id);
                    CREATE TABLE actions (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        type TEXT NOT NULL,
                        status INTEGER NOT NULL,
                        ip TEXT NOT NULL,
                        -- which reservation of the address it belongs to (an address can be released and reserved again)
                        reservation INTEGER NOT NULL,
                        customer TEXT NOT NULL,
                        region TEXT NOT NULL,
                        project_id TEXT NOT NULL,
                        droplet_id INTEGER NOT NULL,
                        from_droplet_id INTEGER NOT NULL DEFAULT 0,
                        phase INTEGER NOT NULL DEFAULT 0,
                        event_id INTEGER NOT NULL DEFAULT 0,
                        releasing INTEGER NOT NULL DEFAULT 0,
                        started_at REAL NOT NULL,
                        completed_at REAL,
                        error TEXT NOT NULL DEFAULT ''
                    );
                    CREATE INDEX actions_by_customer ON actions(customer, id);
                    CREATE INDEX actions_by_ip ON actions(ip, reservation, id);
                    CREATE INDEX actions_in_progress ON actions(status, droplet_id, from_droplet_id);
                    CREATE TABLE idempotency (
                        customer TEXT NOT NULL,
                        key TEXT NOT NULL,
                        ip TEXT NOT NULL,
                        action_id INTEGER NOT NULL,
                        PRIMARY KEY (customer, key)
                    );
                    CREATE TABLE billing (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        customer TEXT NOT NULL,
                        ip TEXT NOT NULL,
                        region TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        action_id INTEGER NOT NULL,
                        droplet_id INTEGER NOT NULL,
                        at REAL NOT NULL
                    );
                    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                    """)
        }
        return migrator
    }

    // MARK: Rows

    private static let ipColumns = "ip, customer, region, project_id, droplet_id, action_id, created_at, seq"
    private static let actionColumns =
        "id, type, status, ip, customer, region, project_id, droplet_id, from_droplet_id, phase, event_id, releasing, started_at, completed_at, error"

    private static func reservedIP(_ row: Row) -> Reservedip_V1_ReservedIP {
        Reservedip_V1_ReservedIP(
            ip: row["ip"], customer: row["customer"], region: row["region"], projectId: row["project_id"],
            dropletId: row["droplet_id"],
            locked: (row["action_id"] as Int64?) != nil,
            createdAt: Google_Protobuf_Timestamp(secondsSince1970: row["created_at"])
        )
    }

    private static func actionState(_ row: Row) -> ActionState {
        var action = Reservedip_V1_Action(
            id: row["id"], type: row["type"], status: Reservedip_V1_Action.Status(rawValue: row["status"]),
            ip: row["ip"],
            customer: row["customer"], region: row["region"], dropletId: row["droplet_id"],
            startedAt: Google_Protobuf_Timestamp(secondsSince1970: row["started_at"]), error: row["error"],
            projectId: row["project_id"]
        )
        if let completed = row["completed_at"] as Double? {
            action.completedAt = Google_Protobuf_Timestamp(secondsSince1970: completed)
        }
        return ActionState(
            action: action, fromDropletId: row["from_droplet_id"], phase: row["phase"], eventId: row["event_id"],
            releasing: row["releasing"])
    }

    private static func fetchIP(_ db: Database, _ ip: String, customer: String) throws -> Reservedip_V1_ReservedIP? {
        try Row.fetchOne(
            db.cachedStatement(
                sql: "SELECT \(ipColumns) FROM reserved_ips WHERE ip = ? AND customer = ? AND released = 0"),
            arguments: [ip, customer]
        ).map(reservedIP)
    }

    private static func fetchAction(_ db: Database, id: Int64) throws -> ActionState? {
        try Row.fetchOne(db.cachedStatement(sql: "SELECT \(actionColumns) FROM actions WHERE id = ?"), arguments: [id])
            .map(actionState)
    }

    private static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: Idempotency

    /// Idempotency keys are the customer's own: two customers may use the same key.
    private struct ScopedKey {
        var customer: String
        var key: String
    }

    private static func scopedKey(_ key: String, customer: String) -> ScopedKey? {
        key.isEmpty ? nil : ScopedKey(customer: customer, key: key)
    }

    private static func remembered(_ db: Database, key: ScopedKey?) throws -> (ip: String, actionId: Int64)? {
        guard let key else { return nil }
        return try Row.fetchOne(
            db.cachedStatement(sql: "SELECT ip, action_id FROM idempotency WHERE customer = ? AND key = ?"),
            arguments: [key.customer, key.key]
        ).map { ($0["ip"], $0["action_id"]) }
    }

    private static func remember(_ db: Database, key: ScopedKey?, ip: String, actionId: Int64) throws {
        guard let key else { return }
        try db.cachedStatement(sql: "INSERT INTO idempotency (customer, key, ip, action_id) VALUES (?, ?, ?, ?)")
            .execute(arguments: [key.customer, key.key, ip, actionId])
    }

    // MARK: Checks shared by the transitions

    private static func dropletBusy(_ db: Database, _ dropletId: Int64) throws -> Bool {
        try Bool.fetchOne(
            db.cachedStatement(
                sql:
                    "SELECT EXISTS (SELECT 1 FROM actions WHERE status = ? AND (droplet_id = ? OR from_droplet_id = ?))"
            ),
            arguments: [Reservedip_V1_Action.Status.inProgress.rawValue, dropletId, dropletId]
        ) ?? false
    }

    /// The IP (other than `except`) already on the droplet, if any: a droplet has at most one reserved IPv4.
    private static func ipOnDroplet(_ db: Database, _ dropletId: Int64, except: String) throws -> String? {
        try String.fetchOne(
            db.cachedStatement(sql: "SELECT ip FROM reserved_ips WHERE droplet_id = ? AND ip != ? LIMIT 1"),
            arguments: [dropletId, except]
        )
    }

    private static func insertAction(_ db: Database, _ new: NewAction, ip: Reservedip_V1_ReservedIP) throws -> Int64 {
        let (type, dropletId, fromDropletId, releasing) = (new.type, new.dropletId, new.fromDropletId, new.releasing)
        try db.cachedStatement(
            sql: """
                INSERT INTO actions (type, status, ip, reservation, customer, region, project_id, droplet_id, from_droplet_id, releasing, started_at)
                VALUES (?, ?, ?, (SELECT seq FROM reserved_ips WHERE ip = ?), ?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [
            type, Reservedip_V1_Action.Status.inProgress.rawValue, ip.ip, ip.ip, ip.customer, ip.region, ip.projectId,
            dropletId, fromDropletId,
            releasing, now(),
        ])
        let id = db.lastInsertedRowID
        try db.cachedStatement(sql: "UPDATE reserved_ips SET action_id = ? WHERE ip = ?").execute(arguments: [
            id, ip.ip,
        ])
        return id
    }

    private static func bill(
        _ db: Database, ip: Reservedip_V1_ReservedIP, kind: String, actionId: Int64, dropletId: Int64
    ) throws {
        try db.cachedStatement(
            sql:
                "INSERT INTO billing (customer, ip, region, kind, action_id, droplet_id, at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        .execute(arguments: [ip.customer, ip.ip, ip.region, kind, actionId, dropletId, now()])
    }

    private static func allocate(
        _ db: Database, pools: AddressPools, customer: String, region: String, projectId: String
    ) throws -> Reservedip_V1_ReservedIP {
        let used = Set(
            try Int64.fetchAll(
                db.cachedStatement(sql: "SELECT number FROM reserved_ips WHERE region = ?"), arguments: [region]
            ).map { UInt32(truncatingIfNeeded: $0) })
        // Addresses are handed out in turn, so a released one is not at once someone else's.
        let cursorKey = "last_allocated/\(region)"
        let last = try Int64.fetchOne(
            db.cachedStatement(sql: "SELECT value FROM meta WHERE key = ?"), arguments: [cursorKey]
        ).map { UInt32(truncatingIfNeeded: $0) }
        let number = try ReservedIPRules.allocate(in: region, pools: pools, after: last, used: used)
        let ip = IPv4.format(number)
        let created = now()
        try db.cachedStatement(
            sql: "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        )
        .execute(arguments: [cursorKey, Int64(number)])
        try db.execute(
            sql:
                "INSERT INTO meta (key, value) VALUES ('reservations', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1"
        )
        let seq = try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'reservations'") ?? 1
        try db.cachedStatement(
            sql: """
                INSERT INTO reserved_ips (ip, number, customer, region, project_id, created_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [ip, Int64(number), customer, region, projectId, created, seq])
        return Reservedip_V1_ReservedIP(
            ip: ip, customer: customer, region: region, projectId: projectId,
            createdAt: Google_Protobuf_Timestamp(secondsSince1970: created))
    }

    // MARK: Transitions

    /// Reserves a free address of `region` to the customer (no action): billed as a reservation.
    package func reserve(
        customer: String, region: String, projectId: String, key: String
    ) async throws -> Reservedip_V1_ReservedIP {
        let scoped = Self.scopedKey(key, customer: customer)
        return try await pool.write { [pools] db in
            if let (ip, _) = try Self.remembered(db, key: scoped) {
                guard let existing = try Self.fetchIP(db, ip, customer: customer) else {
                    throw ReservedIPError.notFound("reserved IP \(ip)")
                }
                return existing
            }
            let ip = try Self.allocate(db, pools: pools, customer: customer, region: region, projectId: projectId)
            try Self.bill(db, ip: ip, kind: "reserve", actionId: 0, dropletId: 0)
            try Self.remember(db, key: scoped, ip: ip.ip, actionId: 0)
            return ip
        }
    }

    /// Reserves an address in the droplet's region and starts assigning it to the droplet (already checked to be the
    /// customer's, active, in `region`). Returns the IP (locked, not yet assigned), its action, and whether both are new.
    package func reserveToDroplet(
        customer: String, region: String, projectId: String, dropletId: Int64, key: String
    ) async throws -> (Reservedip_V1_ReservedIP, ActionState, isNew: Bool) {
        let scoped = Self.scopedKey(key, customer: customer)
        return try await pool.write { [pools] db in
            if let (ip, actionId) = try Self.remembered(db, key: scoped),
                let action = try Self.fetchAction(db, id: actionId)
            {
                let row = try Row.fetchOne(
                    db.cachedStatement(sql: "SELECT \(Self.ipColumns) FROM reserved_ips WHERE ip = ?"), arguments: [ip])
                return (row.map(Self.reservedIP) ?? Reservedip_V1_ReservedIP(ip: ip), action, false)
            }
            let new = try ReservedIPRules.reserveToDroplet(
                dropletId: dropletId, dropletBusy: Self.dropletBusy(db, dropletId),
                ipOnDroplet: Self.ipOnDroplet(db, dropletId, except: "")
            )
            var ip = try Self.allocate(db, pools: pools, customer: customer, region: region, projectId: projectId)
            try Self.bill(db, ip: ip, kind: "reserve", actionId: 0, dropletId: 0)
            let actionId = try Self.insertAction(db, new, ip: ip)
            try Self.remember(db, key: scoped, ip: ip.ip, actionId: actionId)
            ip.locked = true
            guard let action = try Self.fetchAction(db, id: actionId) else {
                throw ReservedIPError.corrupt("an action just written cannot be read back")
            }
            return (ip, action, true)
        }
    }

    /// Starts assigning the IP to a droplet (checked to be the customer's, active, in the IP's region), leaving the
    /// droplet it is on first if any. Refuses while the IP or either droplet has an action in flight.
    package func beginAssign(
        customer: String, ip address: String, dropletId: Int64, key: String
    ) async throws -> (ActionState, isNew: Bool) {
        let scoped = Self.scopedKey(key, customer: customer)
        return try await pool.write { db in
            if let (_, actionId) = try Self.remembered(db, key: scoped),
                let action = try Self.fetchAction(db, id: actionId)
            {
                return (action, false)
            }
            let ip = try Self.fetchIP(db, address, customer: customer)
            let new = try ReservedIPRules.assign(
                ip, address: address, to: dropletId, dropletBusy: Self.dropletBusy(db, dropletId),
                fromDropletBusy: ip.map { $0.dropletId != 0 ? try Self.dropletBusy(db, $0.dropletId) : false } ?? false,
                ipOnDroplet: Self.ipOnDroplet(db, dropletId, except: address)
            )
            guard let ip else { throw ReservedIPError.notFound("reserved IP \(address)") }
            let actionId = try Self.insertAction(db, new, ip: ip)
            try Self.remember(db, key: scoped, ip: ip.ip, actionId: actionId)
            guard let action = try Self.fetchAction(db, id: actionId) else {
                throw ReservedIPError.corrupt("an action just written cannot be read back")
            }
            return (action, true)
        }
    }

    /// Starts unassigning the IP from its droplet.
    package func beginUnassign(
        customer: String, ip address: String, key: String
    ) async throws -> (ActionState, isNew: Bool) {
        let scoped = Self.scopedKey(key, customer: customer)
        return try await pool.write { db in
            if let (_, actionId) = try Self.remembered(db, key: scoped),
                let action = try Self.fetchAction(db, id: actionId)
            {
                return (action, false)
            }
            let ip = try Self.fetchIP(db, address, customer: customer)
            let new = try ReservedIPRules.unassign(
                ip, address: address,
                dropletBusy: ip.map { $0.dropletId != 0 ? try Self.dropletBusy(db, $0.dropletId) : false } ?? false
            )
            guard let ip else { throw ReservedIPError.notFound("reserved IP \(address)") }
            let actionId = try Self.insertAction(db, new, ip: ip)
            try Self.remember(db, key: scoped, ip: ip.ip, actionId: actionId)
            guard let action = try Self.fetchAction(db, id: actionId) else {
                throw ReservedIPError.corrupt("an action just written cannot be read back")
            }
            return (action, true)
        }
    }

    /// Removes the IP from the customer's account at once. An unassigned one goes straight back to the pool; an
    /// assigned one gets an unassign action (returned) and goes back when that ends. Refused while an action is in flight.
    package func release(customer: String, ip address: String, key: String) async throws -> ActionState? {
        let scoped = Self.scopedKey(key, customer: customer)
        return try await pool.write { db in
            if let (_, actionId) = try Self.remembered(db, key: scoped) {
                return try Self.fetchAction(db, id: actionId)
            }
            let found = try Self.fetchIP(db, address, customer: customer)
            let decision = try ReservedIPRules.release(found, address: address)
            guard let ip = found else { throw ReservedIPError.notFound("reserved IP \(address)") }
            try Self.bill(db, ip: ip, kind: "release", actionId: 0, dropletId: ip.dropletId)
            guard case .unassignFirst(let new) = decision else {
                try db.cachedStatement(sql: "DELETE FROM reserved_ips WHERE ip = ?").execute(arguments: [ip.ip])
                try Self.remember(db, key: scoped, ip: ip.ip, actionId: 0)
                return nil
            }
            try db.cachedStatement(sql: "UPDATE reserved_ips SET released = 1 WHERE ip = ?").execute(arguments: [ip.ip])
            let actionId = try Self.insertAction(db, new, ip: ip)
            try Self.remember(db, key: scoped, ip: ip.ip, actionId: actionId)
            return try Self.fetchAction(db, id: actionId)
        }
    }

    /// Forgets an action whose first step was refused before anything happened (the droplet had another event in
    /// flight): the action, its idempotency key, and for a reservation to a droplet the reservation itself.
    package func abandon(_ state: ActionState, reservation: Bool) async throws {
        try await pool.write { db in
            try db.cachedStatement(sql: "DELETE FROM actions WHERE id = ?").execute(arguments: [state.action.id])
            try db.cachedStatement(sql: "DELETE FROM idempotency WHERE action_id = ?").execute(arguments: [
                state.action.id
            ])
            if reservation {
                try db.cachedStatement(sql: "DELETE FROM reserved_ips WHERE ip = ?").execute(arguments: [
                    state.action.ip
                ])
                try db.cachedStatement(
                    sql:
                        "DELETE FROM billing WHERE ip = ? AND kind = 'reserve' AND id = (SELECT MAX(id) FROM billing WHERE ip = ?)"
                )
                .execute(arguments: [state.action.ip, state.action.ip])
            } else {
                try db.cachedStatement(sql: "UPDATE reserved_ips SET action_id = NULL WHERE ip = ? AND action_id = ?")
                    .execute(arguments: [state.action.ip, state.action.id])
            }
        }
    }

    /// Records the Harpoon event of the action's current step.
    package func recordEvent(actionId: Int64, phase: Int, eventId: Int64) async throws {
        try await pool.write { db in
            try db.cachedStatement(sql: "UPDATE actions SET event_id = ? WHERE id = ? AND phase = ? AND status = ?")
                .execute(arguments: [eventId, actionId, phase, Reservedip_V1_Action.Status.inProgress.rawValue])
        }
    }

    /// The current step ended. Completed: the IP leaves or joins the step's droplet, and the action moves to its next
    /// step or completes (unlocking the IP and writing its billing record). Errored: the action errors with `error`,
    /// the IP is unlocked where it is. Returns the action as it now is.
    @discardableResult
    package func finishStep(actionId: Int64, phase: Int, completed: Bool, error: String) async throws -> ActionState? {
        try await pool.write { db in
            guard let state = try Self.fetchAction(db, id: actionId) else { return nil }
            guard let end = ReservedIPRules.finishStep(state, phase: phase, completed: completed, error: error) else {
                return state
            }  // already applied
            let now = Self.now()
            if let dropletId = end.ipDropletId {
                try db.cachedStatement(sql: "UPDATE reserved_ips SET droplet_id = ? WHERE ip = ?").execute(arguments: [
                    dropletId, state.action.ip,
                ])
            }
            switch end.next {
            case .step(let next):
                try db.cachedStatement(sql: "UPDATE actions SET phase = ?, event_id = 0 WHERE id = ?").execute(
                    arguments: [next, actionId])
            case .completed(let billing):
                try db.cachedStatement(sql: "UPDATE actions SET status = ?, completed_at = ? WHERE id = ?")
                    .execute(arguments: [Reservedip_V1_Action.Status.completed.rawValue, now, actionId])
                if let row = try Row.fetchOne(
                    db.cachedStatement(sql: "SELECT \(Self.ipColumns) FROM reserved_ips WHERE ip = ?"),
                    arguments: [state.action.ip])
                {
                    try Self.bill(
                        db, ip: Self.reservedIP(row), kind: billing, actionId: actionId,
                        dropletId: state.action.dropletId)
                }
            case .errored(let error):
                try db.cachedStatement(sql: "UPDATE actions SET status = ?, completed_at = ?, error = ? WHERE id = ?")
                    .execute(arguments: [Reservedip_V1_Action.Status.errored.rawValue, now, error, actionId])
            }
            if end.unlocks {
                try db.cachedStatement(sql: "UPDATE reserved_ips SET action_id = NULL WHERE ip = ? AND action_id = ?")
                    .execute(arguments: [state.action.ip, actionId])
            }
            if end.deletesReleasedIP {
                // A released IP is done with once its unassign completes (if it errored, the droplet is gone or broken:
                // the address is not handed out again while a hypervisor may still hold it).
                try db.cachedStatement(sql: "DELETE FROM reserved_ips WHERE ip = ? AND released = 1").execute(
                    arguments: [state.action.ip])
            }
            return try Self.fetchAction(db, id: actionId) ?? state
        }
    }

    /// A droplet was destroyed: an IP on it is no longer assigned (unless an action on the IP is deciding that).
    package func dropletDestroyed(_ dropletId: Int64) async throws {
        try await pool.write { db in
            try db.cachedStatement(
                sql: "UPDATE reserved_ips SET droplet_id = 0 WHERE droplet_id = ? AND action_id IS NULL"
            ).execute(arguments: [dropletId])
            try db.cachedStatement(
                sql: "DELETE FROM reserved_ips WHERE droplet_id = 0 AND released = 1 AND action_id IS NULL"
            ).execute()
        }
    }

    // MARK: Reads

    package func reservedIP(_ ip: String, customer: String) async throws -> Reservedip_V1_ReservedIP? {
        try database.readNow { db in try Self.fetchIP(db, ip, customer: customer) }
    }

    package func reservedIPs(
        customer: String, limit: Int, offset: Int
    ) async throws -> (items: [Reservedip_V1_ReservedIP], total: Int) {
        try await pool.read { db in
            let total =
                try Int.fetchOne(
                    db.cachedStatement(sql: "SELECT COUNT(*) FROM reserved_ips WHERE customer = ? AND released = 0"),
                    arguments: [customer]) ?? 0
            let items = try Row.fetchAll(
                db.cachedStatement(
                    sql:
                        "SELECT \(Self.ipColumns) FROM reserved_ips WHERE customer = ? AND released = 0 ORDER BY seq LIMIT ? OFFSET ?"
                ),
                arguments: [customer, limit, offset]
            ).map(Self.reservedIP)
            return (items, total)
        }
    }

    package func action(id: Int64, customer: String) async throws -> ActionState? {
        try database.readNow { db in
            try Self.fetchAction(db, id: id).flatMap { $0.action.customer == customer ? $0 : nil }
        }
    }

    /// The action if it belongs to the address's current reservation (the per-IP actions path).
    package func action(id: Int64, customer: String, ip: String) async throws -> ActionState? {
        try await pool.read { db in
            guard
                let seq = try Int64.fetchOne(
                    db.cachedStatement(
                        sql: "SELECT seq FROM reserved_ips WHERE ip = ? AND customer = ? AND released = 0"),
                    arguments: [ip, customer]
                ),
                try Int64.fetchOne(
                    db.cachedStatement(sql: "SELECT reservation FROM actions WHERE id = ?"), arguments: [id]) == seq
            else { return nil }
            return try Self.fetchAction(db, id: id).flatMap { $0.action.customer == customer ? $0 : nil }
        }
    }

    package func actions(
        customer: String, ip: String?, limit: Int, offset: Int
    ) async throws -> (items: [Reservedip_V1_Action], total: Int) {
        try await pool.read { db in
            var condition = "customer = ?"
            var arguments: StatementArguments = [customer]
            if let ip {
                condition +=
                    " AND ip = ? AND reservation = (SELECT seq FROM reserved_ips WHERE ip = ? AND customer = ? AND released = 0)"
                _ = arguments.append(contentsOf: [ip, ip, customer])
            }
            let total =
                try Int.fetchOne(
                    db.cachedStatement(sql: "SELECT COUNT(*) FROM actions WHERE \(condition)"), arguments: arguments)
                ?? 0
            _ = arguments.append(contentsOf: [limit, offset])
            let items = try Row.fetchAll(
                db.cachedStatement(
                    sql: "SELECT \(Self.actionColumns) FROM actions WHERE \(condition) ORDER BY id LIMIT ? OFFSET ?"),
                arguments: arguments
            ).map { Self.actionState($0).action }
            return (items, total)
        }
    }

    package func actionsInProgress() async throws -> [ActionState] {
        try await pool.read { db in
            try Row.fetchAll(
                db.cachedStatement(sql: "SELECT \(Self.actionColumns) FROM actions WHERE status = ? ORDER BY id"),
                arguments: [Reservedip_V1_Action.Status.inProgress.rawValue]
            ).map(Self.actionState)
        }
    }

    package func actionsInProgressCount() async throws -> Int {
        try await pool.read { db in
            try Int.fetchOne(
                db.cachedStatement(sql: "SELECT COUNT(*) FROM actions WHERE status = ?"),
                arguments: [Reservedip_V1_Action.Status.inProgress.rawValue]
            ) ?? 0
        }
    }

    package func actionState(id: Int64) async throws -> ActionState? {
        try await pool.read { db in try Self.fetchAction(db, id: id) }
    }

    /// Billing records, oldest first: (kind, ip, droplet, action).
    package func billing(
        customer: String
    ) async throws -> [(kind: String, ip: String, dropletId: Int64, actionId: Int64)] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT kind, ip, droplet_id, action_id FROM billing WHERE customer = ? ORDER BY id",
                arguments: [customer]
            )
            .map { ($0["kind"], $0["ip"], $0["droplet_id"], $0["action_id"]) }
        }
    }

    /// Where the watch of Harpoon's event stream stopped, so a restart resumes there.
    package func watchCursor() async throws -> Int64 {
        try await pool.read { db in
            try Int64.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'watch_cursor'") ?? 0
        }
    }

    package func saveWatchCursor(_ cursor: Int64) async throws {
        try await pool.write { db in
            try db.execute(
                sql:
                    "INSERT INTO meta (key, value) VALUES ('watch_cursor', ?) ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
                arguments: [cursor])
        }
    }

    /// One process drives every action: nothing to claim.
    package func claimAction(_ id: Int64, driver: String, seconds: Double) async throws -> Bool { true }

    package func releaseAction(_ id: Int64, driver: String) async throws {}

    package func releaseClaims(driver: String) async throws {}

    package func listenForReleases(_ released: @escaping @Sendable () -> Void) async {}
}
