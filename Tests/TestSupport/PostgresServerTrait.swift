internal import Foundation
package import LocalPostgres
package import PostgresSupport
package import Testing

/// A PostgreSQL server of a test's own (deleted when stopped).
package typealias ThrowawayPostgres = LocalPostgres

/// A suite trait: one throwaway PostgreSQL server (``ThrowawayPostgres``) for the whole suite, started before its
/// first test and stopped after its last; its tests find it in ``ThrowawayPostgres/current``.
package struct PostgresServerTrait: SuiteTrait, TestScoping {
    package var isRecursive: Bool { false }

    package func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let server = try await ThrowawayPostgres.start()
        defer { server.stop() }
        try await ThrowawayPostgres.$current.withValue(server) { try await function() }
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
