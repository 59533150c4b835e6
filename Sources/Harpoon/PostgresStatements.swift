internal import Foundation
internal import HarpoonAPI
internal import PostgresNIO

/// The text of a statement that runs often: prepared (parsed) once per connection, then only bound, planned for its
/// values (the pools ask for custom plans, see ``PostgresPool``) and run.
protocol StatementText {
    static var sql: String { get }
}

/// A prepared statement of Harpoon's: its text, the values bound to it and how a row reads.
struct Prepared<Text: StatementText, Row>: PostgresPreparedStatement {
    static var name: String { "harpoon_\(Text.self)" }
    static var sql: String { Text.sql }
    let bindings: PostgresBindings
    let decode: @Sendable (PostgresRow) throws -> Row

    func makeBindings() -> PostgresBindings { bindings }
    func decodeRow(_ row: PostgresRow) throws -> Row { try decode(row) }
}

extension Prepared where Row == Void {
    init(_ bindings: PostgresBindings) {
        self.init(bindings: bindings) { _ in }
    }
}

extension PostgresHarpoonStore {
    static let eventColumns =
        "id, type, droplet_id, customer, region, hypervisor_id, status, payload, error, created_at, updated_at, cursor, refusals, request_id, traceparent"

    typealias EventRow = (
        Int64, String, Int64, String, String, String, Int32, Data, String, Double, Double, Int64?, Int32, String, String
    )

    static func event(_ row: EventRow) -> Harpoon_V1_Event {
        Harpoon_V1_Event(
            id: row.0, type: row.1, dropletId: row.2, customer: row.3, region: row.4, hypervisorId: row.5,
            status: Harpoon_V1_Event.Status(rawValue: row.6), payload: [UInt8](row.7), error: row.8,
            createdAt: HarpoonRules.timestamp(row.9), updatedAt: HarpoonRules.timestamp(row.10), cursor: row.11 ?? 0,
            refusals: UInt32(clamping: row.12), requestId: row.13, traceparent: row.14
        )
    }

    /// Runs a prepared statement whose rows are events; returns them.
    static func events<Text: StatementText>(
        _ connection: PostgresConnection, _ logger: Logger, _ text: Text.Type, _ binds: PostgresBindings
    ) async throws -> [Harpoon_V1_Event] {
        var events: [Harpoon_V1_Event] = []
        let statement = Prepared<Text, Harpoon_V1_Event>(bindings: binds) { row in event(try row.decode(EventRow.self))
        }
        for try await event in try await connection.execute(statement, logger: logger) { events.append(event) }
        return events
    }

    /// The events with these ids, locked (`FOR UPDATE`) in id order.
    enum LockEvents: StatementText {
        static let sql = "SELECT \(eventColumns) FROM events WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    }

    /// The outbox entries with these ids that are there, locked in id order, with their events.
    enum LockEntries: StatementText {
        static let sql = "SELECT id, event_id FROM outbox WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    }

    /// Events changed after a cursor, in cursor order.
    enum ChangesAfter: StatementText {
        static let sql = "SELECT \(eventColumns) FROM events WHERE cursor > $1 ORDER BY cursor LIMIT $2"
    }

    /// A customer's events changed after a cursor, in cursor order.
    enum CustomerChangesAfter: StatementText {
        static let sql =
            "SELECT \(eventColumns) FROM events WHERE cursor > $1 AND customer = $2 ORDER BY cursor LIMIT $3"
    }

    /// Events by id (any order).
    enum EventsByID: StatementText {
        static let sql = "SELECT \(eventColumns) FROM events WHERE id = ANY($1)"
    }
}
