// What Shoal's SQLite stores share: how a database is opened, and the point read of the hot paths.
package import GRDB
internal import GRDBSQLite
internal import NIOPosix
internal import Synchronization

/// When a committed transaction is on disk (SQLite's `synchronous`, in WAL mode).
package enum SQLiteDurability: String, Sendable, CaseIterable {
    /// Every commit is synced before it is acknowledged: an acknowledged write survives a crash of the process and of
    /// the machine (power loss). The default. Group commit makes it one sync per batch of writes, not per write.
    case full
    /// Commits are synced at WAL checkpoints: an acknowledged write survives a crash of the process, but the last
    /// commits before a power loss or kernel crash may be lost (the database stays consistent).
    case normal
}

/// A service's own database in one SQLite file: WAL, one writer and `readers` reader connections, whatever the
/// load. The connection count is fixed by configuration.
package struct SQLiteDatabase: Sendable {
    package let pool: DatabasePool
    package let readers: Int
    /// Read-only connections of their own for point reads on event-loop threads (``readNow(_:)``).
    private let pointReaders: PointReaders

    /// Opens (creating if needed) the database at `path` and brings its schema up to date with `migrator`.
    package init(path: String, readers: Int, migrator: DatabaseMigrator, durability: SQLiteDurability = .full) throws {
        var configuration = Configuration()
        configuration.maximumReaderCount = readers
        configuration.busyMode = .timeout(10)
        let synchronous = durability == .full ? "FULL" : "NORMAL"
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        // GRDB sets its writer to NORMAL when it turns on WAL, after `prepareDatabase`: the writer (the one connection
        // that commits, for the pool's life) gets the chosen mode here.
        try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = \(synchronous)") }
        self.readers = readers
        try migrator.migrate(pool)
        pointReaders = PointReaders(path: path)
    }

    /// The pool's connections (one writer, `readers` readers) and the event loops' point-read connections open now
    /// (at most one per event-loop thread): fixed by configuration, not by load.
    package var connectionCount: Int { 1 + readers + pointReaders.count }

    /// A point read on the caller's thread: a WAL reader never waits for the writer, and one indexed row costs less
    /// than the two thread hops of an asynchronous read (the hot path of the customer API's GETs). Only for a single
    /// statement, which SQLite runs atomically on its own: it skips the BEGIN/COMMIT of an isolated read, which cost
    /// twice the SELECT itself.
    ///
    /// On an event loop it never waits for the pool: each event-loop thread reads through a read-only connection of its
    /// own (WAL readers never block). Waiting there could deadlock: services run Swift concurrency on the event loops,
    /// and an asynchronous `pool.read` gives its reader back only when its task resumes, on an event loop — perhaps
    /// the very one that would be blocked waiting for a reader. Elsewhere it takes a pool reader, as any read does.
    package func readNow<T>(_ body: (Database) throws -> T) throws -> T {
        guard let loop = MultiThreadedEventLoopGroup.currentEventLoop else { return try pool.unsafeRead(body) }
        return try pointReaders.connection(for: ObjectIdentifier(loop)).inDatabase(body)
    }
}

/// One read-only connection per event loop, opened on its first point read. Only its own loop's thread uses each, so
/// none is ever waited for.
final class PointReaders: Sendable {
    private let path: String
    private let connections = Mutex<[ObjectIdentifier: DatabaseQueue]>([:])

    init(path: String) { self.path = path }

    var count: Int { connections.withLock { $0.count } }

    func connection(for loop: ObjectIdentifier) throws -> DatabaseQueue {
        try connections.withLock { connections in
            if let existing = connections[loop] { return existing }
            var configuration = Configuration()
            configuration.readonly = true
            configuration.busyMode = .timeout(10)
            let connection = try DatabaseQueue(path: path, configuration: configuration)
            connections[loop] = connection
            return connection
        }
    }
}

/// Values bound straight to a prepared statement's parameters through SQLite's C API, for the writer's hottest
/// statements: GRDB's `StatementArguments` box every value and bind through nested closures, which cost as much as
/// the insert itself at thousands of statements a second.
package struct Bindings: ~Copyable {
    fileprivate let statement: OpaquePointer
    fileprivate var failure: CInt = SQLITE_OK

    /// SQLite copies the bytes before the call returns (`SQLITE_TRANSIENT`).
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    private mutating func check(_ code: CInt) {
        if code != SQLITE_OK, failure == SQLITE_OK { failure = code }
    }

    package mutating func bind(_ index: CInt, _ value: Int64) { check(sqlite3_bind_int64(statement, index, value)) }
    package mutating func bind(_ index: CInt, _ value: Int) { bind(index, Int64(value)) }
    package mutating func bind(_ index: CInt, _ value: Double) { check(sqlite3_bind_double(statement, index, value)) }

    package mutating func bind(_ index: CInt, _ value: String) {
        var value = value
        let code = value.withUTF8 { bytes -> CInt in
            // A zero-length text still needs a non-null pointer to be text, not NULL.
            guard let base = bytes.baseAddress else {
                return sqlite3_bind_text(statement, index, "", 0, Self.transient)
            }
            return base.withMemoryRebound(to: CChar.self, capacity: bytes.count) {
                sqlite3_bind_text(statement, index, $0, CInt(bytes.count), Self.transient)
            }
        }
        check(code)
    }

    /// `nil` binds NULL.
    package mutating func bind(_ index: CInt, _ value: String?) {
        if let value { bind(index, value) } else { check(sqlite3_bind_null(statement, index)) }
    }

    /// `nil` binds NULL.
    package mutating func bind(_ index: CInt, _ value: Int64?) {
        if let value { bind(index, value) } else { check(sqlite3_bind_null(statement, index)) }
    }

    package mutating func bind(_ index: CInt, _ bytes: [UInt8]) {
        let code = bytes.withUnsafeBytes { buffer in
            buffer.baseAddress.map { sqlite3_bind_blob(statement, index, $0, CInt(buffer.count), Self.transient) }
                ?? sqlite3_bind_zeroblob(statement, index, 0)
        }
        check(code)
    }
}

extension Statement {
    /// Runs the statement with its parameters bound by `bind`, every one of them (an unbound one would be NULL).
    package func execute(binding bind: (inout Bindings) -> Void) throws {
        // Clears GRDB's own arguments and marks the statement bound, so that `execute()` resets it (keeping the
        // bindings below) instead of binding arguments of an earlier use again.
        setUncheckedArguments(StatementArguments())
        var bindings = Bindings(statement: sqliteStatement)
        bind(&bindings)
        guard bindings.failure == SQLITE_OK else {
            throw DatabaseError(
                resultCode: ResultCode(rawValue: bindings.failure), message: "binding a parameter failed", sql: sql)
        }
        try execute()
    }
}
