// What Shoal's PostgreSQL stores share: the database's address, a connection pool that runs as long as its store,
// versioned migrations that replicas starting together run once, and change notifications between replicas.
internal import Foundation
package import Logging
package import PostgresNIO

/// Where a PostgreSQL database is: `postgres://user[:password]@host[:port]/database` (or `postgresql://`).
package struct PostgresAddress: Sendable, Hashable, CustomStringConvertible {
    package var host: String
    package var port: Int
    package var user: String
    package var password: String?
    package var database: String

    /// Whether `text` names a PostgreSQL database rather than a file.
    package static func isPostgres(_ text: String) -> Bool {
        text.hasPrefix("postgres://") || text.hasPrefix("postgresql://")
    }

    package enum Invalid: Error, CustomStringConvertible {
        case url(String)
        package var description: String {
            switch self {
            case .url(let text):
                "'\(text)' is not a PostgreSQL address: postgres://user[:password]@host[:port]/database"
            }
        }
    }

    package init(url text: String) throws(Invalid) {
        guard Self.isPostgres(text), let components = URLComponents(string: text), let host = components.host,
            !host.isEmpty,
            let user = components.user, !user.isEmpty
        else {
            throw .url(text)
        }
        let database = String(components.path.drop { $0 == "/" })
        guard !database.isEmpty, !database.contains("/") else { throw .url(text) }
        self.host = host
        port = components.port ?? 5432
        self.user = user
        password = components.password
        self.database = database
    }

    package init(host: String, port: Int, user: String, password: String? = nil, database: String) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.database = database
    }

    /// The address without its password (for logs and errors).
    package var description: String { "postgres://\(user)@\(host):\(port)/\(database)" }
}

/// A service's connections to its PostgreSQL database: a pool of at most `maximumConnections` (fixed by
/// configuration, not by load), running from ``init(_:maximumConnections:applicationName:)`` until ``close()``.
package final class PostgresPool: Sendable {
    package let client: PostgresClient
    package let address: PostgresAddress
    package let maximumConnections: Int
    package let logger: Logger
    private let running: Task<Void, Never>

    package init(_ address: PostgresAddress, maximumConnections: Int = 8, applicationName: String) {
        var configuration = PostgresClient.Configuration(
            host: address.host, port: address.port, username: address.user, password: address.password,
            database: address.database, tls: .disable
        )
        configuration.options.maximumConnections = maximumConnections
        configuration.options.minimumConnections = 0
        // Prepared statements are planned for the values of each run: they take arrays of ids whose sizes vary
        // from 1 to hundreds, and a generic plan (PostgreSQL's choice after five runs) guesses them badly, turning
        // index lookups into scans. Preparing still saves the parse and analysis.
        configuration.options.additionalStartupParameters = [
            ("application_name", applicationName), ("plan_cache_mode", "force_custom_plan"),
        ]
        var logger = Logger(label: "shoal.postgres")
        logger.logLevel = .warning
        self.logger = logger
        self.address = address
        self.maximumConnections = maximumConnections
        // The client's own log: errors only (it warns of leases asked for before `run()` has begun, which the
        // pool's task below starts at once: the lease waits for it).
        var clientLogger = logger
        clientLogger.logLevel = .error
        let client = PostgresClient(configuration: configuration, backgroundLogger: clientLogger)
        self.client = client
        running = Task { await client.run() }
    }

    /// A service's pool on its database, ready: the schema brought up to date (``migrate(schema:_:)``) and commits
    /// checked to be durable (``requireDurableCommits()``); closed again if either fails.
    package static func open(
        _ address: PostgresAddress, maximumConnections: Int, applicationName: String, schema: String,
        migrations: [(version: String, statements: [String])]
    ) async throws -> PostgresPool {
        let pool = PostgresPool(address, maximumConnections: maximumConnections, applicationName: applicationName)
        do {
            try await pool.migrate(schema: schema, migrations)
            try await pool.requireDurableCommits()
        } catch {
            await pool.close()
            throw error
        }
        return pool
    }

    /// Closes every connection; the pool serves nothing more.
    package func close() async {
        running.cancel()
        await running.value
    }

    /// Runs `body` in a transaction on one connection: committed if it returns, rolled back if it throws (its own
    /// error is rethrown, not wrapped).
    package func transaction<T: Sendable>(_ body: @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await client.withConnection { connection in
            try await Self.transaction(on: connection, logger: logger, body)
        }
    }

    package static func transaction<T: Sendable>(
        on connection: PostgresConnection, logger: Logger, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await connection.query("BEGIN", logger: logger)
        let value: T
        do {
            value = try await body(connection)
        } catch {
            // A rollback that fails leaves the connection broken; the pool replaces it. The body's error is the one
            // that matters to the caller.
            _ = try? await connection.query("ROLLBACK", logger: logger)
            throw error
        }
        try await connection.query("COMMIT", logger: logger)
        return value
    }

    /// Brings `schema`'s tables up to date: each migration not yet recorded runs, in order, in one transaction with
    /// its record. An advisory lock makes replicas that start together take turns: the first migrates, the others
    /// find it done.
    package func migrate(schema: String, _ migrations: [(version: String, statements: [String])]) async throws {
        try await transaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(hashtext('shoal_migrations'))", logger: logger)
            try await connection.query(
                """
                CREATE TABLE IF NOT EXISTS shoal_migrations (
                    schema TEXT NOT NULL, version TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    PRIMARY KEY (schema, version)
                )
                """, logger: logger)
            var applied = Set<String>()
            for try await version in try await connection.query(
                "SELECT version FROM shoal_migrations WHERE schema = \(schema)", logger: logger
            )
            .decode(String.self) {
                applied.insert(version)
            }
            for migration in migrations where !applied.contains(migration.version) {
                for statement in migration.statements {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.query(
                    "INSERT INTO shoal_migrations (schema, version) VALUES (\(schema), \(migration.version))",
                    logger: logger
                )
            }
        }
    }

    /// Refuses to run on a server whose commits are acknowledged before they are on disk: an acknowledged write must
    /// survive a crash of the machine.
    package func requireDurableCommits() async throws {
        let setting = try await client.withConnection { connection -> String in
            var value = ""
            for try await text in try await connection.query("SHOW synchronous_commit", logger: logger).decode(
                String.self)
            { value = text }
            return value
        }
        guard setting != "off" else {
            throw PostgresPoolError.notDurable(
                "synchronous_commit is off on \(address): acknowledged writes could be lost in a crash")
        }
    }

    /// Runs one statement (operators' and benchmarks' SQL, not the stores').
    package func execute(_ sql: String) async throws {
        try await client.withConnection { connection in
            for try await _ in try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger) {}
        }
    }

    /// The first column of every row of a query, as text.
    package func lines(_ sql: String) async throws -> [String] {
        try await client.withConnection { connection in
            var lines: [String] = []
            for try await line in try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger).decode(
                String.self)
            { lines.append(line) }
            return lines
        }
    }

    /// Connections open to this database, as the server counts them (`pg_stat_activity`), every client included.
    package func serverConnectionCount() async throws -> Int {
        try await client.withConnection { connection -> Int in
            var count = 0
            for try await value in try await connection.query(
                "SELECT count(*)::int8 FROM pg_stat_activity WHERE datname = current_database()", logger: logger
            ).decode(Int64.self) {
                count = Int(value)
            }
            return count
        }
    }

    /// Creates the database `name` (letters, digits and `_`) on the server at `server`, unless it exists: for tests
    /// and for `make run`'s local server. Returns its address.
    package static func createDatabase(_ name: String, on server: PostgresAddress) async throws -> PostgresAddress {
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
            throw PostgresAddress.Invalid.url(name)
        }
        let admin = PostgresPool(server, maximumConnections: 1, applicationName: "shoal-admin")
        do {
            let exists = try await admin.client.withConnection { connection -> Bool in
                var found = false
                for try await _ in try await connection.query(
                    "SELECT 1 FROM pg_database WHERE datname = \(name)", logger: admin.logger)
                { found = true }
                return found
            }
            if !exists {
                try await admin.client.withConnection { connection in
                    _ = try await connection.query(
                        PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: admin.logger)
                }
            }
        } catch {
            await admin.close()
            throw error
        }
        await admin.close()
        var address = server
        address.database = name
        return address
    }

    /// Calls `changed` with its payload for every notification on `channel` (a transaction's `NOTIFY`, delivered when
    /// it commits), for as long as the calling task runs. One pooled connection stays leased for it. When listening
    /// starts, and when the connection is lost, `changed` is called with `nil` (notifications may have been missed),
    /// and listening resumes after a short pause.
    package func listen(channel: String, _ changed: @escaping @Sendable (_ payload: String?) -> Void) async {
        var pause = Duration.milliseconds(50)
        while !Task.isCancelled {
            do {
                try await client.withConnection { connection in
                    try await connection.listen(on: channel) { notifications in
                        pause = .milliseconds(50)
                        changed(nil)  // anything committed before the LISTEN took effect
                        for try await notification in notifications { changed(notification.payload) }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                logger.warning(
                    "listening on \(channel) failed; listening again",
                    metadata: ["error": "\(String(reflecting: error))"])
                changed(nil)
            }
            try? await Task.sleep(for: pause)
            pause = min(pause * 2, .seconds(2))
        }
    }
}

package enum PostgresPoolError: Error, CustomStringConvertible {
    case notDurable(String)
    package var description: String {
        switch self {
        case .notDurable(let message): message
        }
    }
}
