internal import Foundation
package import LocalPostgres
package import PostgresSupport
package import Testing

/// A PostgreSQL server of a test's own (deleted when stopped).
package typealias ThrowawayPostgres = LocalPostgres

/// A suite trait: a throwaway PostgreSQL server (``ThrowawayPostgres``) for the suite, there before its first test
/// and until its last; its tests find it in ``ThrowawayPostgres/current`` (and each makes a database of its own).
/// Suites that run at the same time share one server (``SharedPostgres``), stopped when the last of them ends: one
/// initdb for the lot, not one each at the same moment.
package struct PostgresServerTrait: SuiteTrait, TestScoping {
    package var isRecursive: Bool { false }

    package func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        let server = try await SharedPostgres.shared.acquire()
        do {
            try await ThrowawayPostgres.$current.withValue(server) { try await function() }
        } catch {
            await SharedPostgres.shared.release()
            throw error
        }
        await SharedPostgres.shared.release()
    }
}

/// The throwaway server of the suites running now: started by the first to need it, stopped by the last to let go.
actor SharedPostgres {
    static let shared = SharedPostgres()
    private var server: ThrowawayPostgres?
    private var starting: Task<ThrowawayPostgres, any Error>?
    private var users = 0

    func acquire() async throws -> ThrowawayPostgres {
        if let server {
            users += 1
            return server
        }
        let start = starting ?? Task { try await ThrowawayPostgres.start() }
        starting = start
        let started: ThrowawayPostgres
        do {
            started = try await start.value
        } catch {
            starting = nil  // every suite waiting on this start fails with it; the next one tries again
            throw error
        }
        starting = nil
        server = started
        users += 1
        return started
    }

    func release() {
        users -= 1
        guard users == 0, let server else { return }
        self.server = nil
        server.stop()
    }
}

extension Trait where Self == PostgresServerTrait {
    /// A PostgreSQL server of the suite's own.
    package static var postgresServer: Self { PostgresServerTrait() }
}

extension ThrowawayPostgres {
    /// The server of the running suite (``PostgresServerTrait``).
    @TaskLocal package static var current: ThrowawayPostgres?
}

/// The engines every store behaviour is asserted on.
package enum Engine: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    package var testDescription: String { rawValue }
}

/// A new, empty database on the suite's PostgreSQL server (``PostgresServerTrait``).
package func freshPostgresDatabase() async throws -> PostgresAddress {
    let server = try #require(ThrowawayPostgres.current, "the suite needs the .postgresServer trait")
    let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
    return try await PostgresPool.createDatabase(name, on: PostgresAddress(url: server.url()))
}
