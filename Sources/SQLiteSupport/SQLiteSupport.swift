// What Shoal's SQLite stores share: how a database is opened, and the point read of the hot paths.
package import GRDB

/// A service's own database in one SQLite file: WAL, one writer and `readers` reader connections, whatever the
/// load. The connection count is fixed by configuration.
package struct SQLiteDatabase: Sendable {
    package let pool: DatabasePool
    package let readers: Int

    /// Opens (creating if needed) the database at `path` and brings its schema up to date with `migrator`.
    package init(path: String, readers: Int, migrator: DatabaseMigrator) throws {
        var configuration = Configuration()
        configuration.maximumReaderCount = readers
        configuration.busyMode = .timeout(10)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")  // WAL: durable at checkpoints, safe on crash
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        self.readers = readers
        try migrator.migrate(pool)
    }

    package var connectionCount: Int { 1 + readers }

    /// A point read on the caller's thread: a WAL reader never waits for the writer, and one indexed row costs less
    /// than the two thread hops of an asynchronous read (the hot path of the customer API's GETs). Only for a single
    /// statement, which SQLite runs atomically on its own: it skips the BEGIN/COMMIT of an isolated read, which cost
    /// twice the SELECT itself.
    package func readNow<T>(_ body: (Database) throws -> T) throws -> T {
        try pool.unsafeRead(body)
    }
}
