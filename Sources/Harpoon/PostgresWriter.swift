internal import Logging
internal import PostgresNIO
internal import PostgresSupport
internal import Synchronization
internal import HarpoonAPI

/// A value a write returns that carries event change cursors, which are given when the write's transaction is about
/// to commit (after the write ran): ``stamped(_:)`` fills them in.
protocol CursorStamped: Sendable {
    func stamped(_ cursors: [Int64: Int64]) -> Self
}

extension Harpoon_V1_Event: CursorStamped {
    func stamped(_ cursors: [Int64: Int64]) -> Self {
        var event = self
        if let cursor = cursors[id] { event.cursor = cursor }
        return event
    }
}

extension CreatedDroplet: CursorStamped {
    func stamped(_ cursors: [Int64: Int64]) -> Self {
        var created = self
        created.event = event.stamped(cursors)
        return created
    }
}

extension Bool: CursorStamped {
    func stamped(_ cursors: [Int64: Int64]) -> Self { self }
}

/// The event rows a transaction locked, as they are in it (a write that changes one keeps this up to date).
final class LockedEvents {
    var events: [Int64: Harpoon_V1_Event] = [:]
}

/// What one write did in the open transaction: whether it changed rows, and which events it changed.
final class PostgresWriteContext {
    let connection: PostgresConnection
    let logger: Logger
    fileprivate(set) var wrote = false
    /// Events changed in the transaction: each gets its change cursor when the transaction is about to commit.
    fileprivate(set) var changedEvents: [Int64] = []
    /// The events the transaction locked up front (``PostgresWriter``), shared by its writes.
    let locked: LockedEvents

    init(connection: PostgresConnection, logger: Logger, locked: LockedEvents) {
        self.connection = connection
        self.logger = logger
        self.locked = locked
    }

    /// Runs a statement that changes rows; returns its rows.
    @discardableResult
    func write(_ query: PostgresQuery) async throws -> PostgresRowSequence {
        wrote = true
        return try await connection.query(query, logger: logger)
    }

    func read(_ query: PostgresQuery) async throws -> PostgresRowSequence {
        try await connection.query(query, logger: logger)
    }

    /// The event changed: it gets a new change cursor at commit.
    func changed(event id: Int64) {
        changedEvents.append(id)
    }
}

/// Group commit for Harpoon's PostgreSQL store, as ``WriteCoalescer`` is for SQLite: writes that arrive while a
/// transaction runs are gathered into the next one, and a caller is answered only once its transaction committed.
///
/// **Change cursors in commit order.** Every transaction that changed events ends by taking one advisory lock,
/// giving each changed event the next value of one sequence, and committing, which releases the lock. So cursors are
/// handed out in the order the transactions commit, across every replica: once a reader sees cursor C, every change
/// with a lower cursor is already committed and visible, and a watcher that has passed C never misses one later. (A
/// sequence value taken at the start of a transaction would not do: a transaction that took 5 could commit after one
/// that took 6.) The lock is held only for that last statement and the commit.
final class PostgresWriter: Sendable {
    private struct Job: Sendable {
        /// The events the write changes, locked before any write of the transaction runs.
        let locks: [Int64]
        /// Runs the write in the open transaction; returns how to answer the caller once the transaction ends (given
        /// the cursors handed out), and the error if the write failed.
        let run: @Sendable (PostgresWriteContext) async -> (answer: @Sendable (Result<[Int64: Int64], any Error>) -> Void, failure: (any Error)?)
        let fail: @Sendable (any Error) -> Void
    }

    /// Reads and locks (`FOR UPDATE`) the events with these ids, in this order.
    typealias Locker = @Sendable (PostgresConnection, Logger, [Int64]) async throws -> [Harpoon_V1_Event]

    private let pool: PostgresPool
    private let lock: Locker
    private let notifyChannel: String
    /// Sent with each notification: who committed (a replica ignores its own).
    private let notifyPayload: String
    private let jobs = Mutex<(pending: [Job], draining: Bool)>(([], false))
    /// Batches are capped so that one transaction does not hold its rows for long.
    private let maximumBatch = 512

    /// The advisory lock key that orders change cursors (any constant shared by every replica).
    static let cursorLock: Int64 = 0x5348_4F41_4C43_5552  // "SHOALCUR"

    init(pool: PostgresPool, notifyChannel: String, notifyPayload: String, lock: @escaping Locker) {
        self.pool = pool
        self.lock = lock
        self.notifyChannel = notifyChannel
        self.notifyPayload = notifyPayload
    }

    /// - Parameter locking: the events the write changes: the transaction locks every write's events at its start, in
    ///   id order, so that transactions of several replicas never wait for each other in a cycle.
    func write<T: CursorStamped>(locking: [Int64] = [], _ body: @escaping @Sendable (PostgresWriteContext) async throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            enqueue([Self.job(locking, body) { continuation.resume(with: $0) }])
        }
    }

    /// Several writes, each succeeding or failing on its own, queued together so they meet in one transaction.
    func writeEach<T: CursorStamped>(
        _ bodies: [(locking: [Int64], body: @Sendable (PostgresWriteContext) async throws -> T)]
    ) async -> [Result<T, any Error>] {
        guard !bodies.isEmpty else { return [] }
        return await withCheckedContinuation { (continuation: CheckedContinuation<[Result<T, any Error>], Never>) in
            let results = GatheredResults(count: bodies.count, continuation)
            enqueue(bodies.enumerated().map { index, write in Self.job(write.locking, write.body) { results.answer(index, $0) } })
        }
    }

    private static func job<T: CursorStamped>(
        _ locks: [Int64], _ body: @escaping @Sendable (PostgresWriteContext) async throws -> T,
        answer: @escaping @Sendable (Result<T, any Error>) -> Void
    ) -> Job {
        Job(locks: locks, run: { context in
            do {
                let value = try await body(context)
                return ({ committed in answer(committed.map { value.stamped($0) }) }, nil)
            } catch {
                return ({ _ in answer(.failure(error)) }, error)
            }
        }, fail: { answer(.failure($0)) })
    }

    private func enqueue(_ batch: [Job]) {
        let start = jobs.withLock { state -> Bool in
            state.pending.append(contentsOf: batch)
            if state.draining { return false }
            state.draining = true
            return true
        }
        if start { Task { await self.drain() } }
    }

    private func drain() async {
        while true {
            let batch = jobs.withLock { state -> [Job] in
                let batch = Array(state.pending.prefix(maximumBatch))
                state.pending.removeFirst(batch.count)
                if batch.isEmpty { state.draining = false }
                return batch
            }
            if batch.isEmpty { return }
            do {
                // A write that failed after changing rows (or with an error from the server, which aborts the
                // transaction) makes the batch run again, each write in a savepoint of its own, so it fails alone.
                let answers: [@Sendable (Result<[Int64: Int64], any Error>) -> Void]
                let cursors: [Int64: Int64]
                if let together = try await runTogether(batch, isolated: false) {
                    (answers, cursors) = together
                } else if let isolated = try await runTogether(batch, isolated: true) {
                    (answers, cursors) = isolated
                } else {
                    continue
                }
                for answer in answers { answer(.success(cursors)) }
            } catch {
                // The transaction failed: runTogether has answered every caller with the error.
                pool.logger.warning("a write transaction failed", metadata: ["error": "\(String(reflecting: error))"])
            }
        }
    }

    /// Runs `batch` in one transaction and commits it; `nil` if a write failed in a way that spoils the transaction
    /// (possible only when not `isolated`: then it is rolled back). A transaction that fails answers every caller with
    /// its error before throwing it.
    private func runTogether(
        _ batch: [Job], isolated: Bool
    ) async throws -> (answers: [@Sendable (Result<[Int64: Int64], any Error>) -> Void], cursors: [Int64: Int64])? {
        var answers: [@Sendable (Result<[Int64: Int64], any Error>) -> Void] = []
        answers.reserveCapacity(batch.count)
        do {
            return try await pool.client.withConnection { connection in
                let logger = pool.logger
                try await connection.query("BEGIN", logger: logger)
                do {
                    // Every event the batch changes, locked at once and in id order: one round trip, and no cycle of
                    // waits with another replica's transaction (which locks in the same order).
                    let locked = LockedEvents()
                    let ids = Set(batch.flatMap(\.locks)).sorted()
                    if !ids.isEmpty {
                        for event in try await lock(connection, logger, ids) { locked.events[event.id] = event }
                    }
                    var changed: [Int64] = []
                    for job in batch {
                        let context = PostgresWriteContext(connection: connection, logger: logger, locked: locked)
                        let before = isolated ? locked.events : [:]
                        if isolated { try await connection.query("SAVEPOINT write", logger: logger) }
                        let (answer, failure) = await job.run(context)
                        if let failure {
                            if isolated {
                                try await connection.query("ROLLBACK TO SAVEPOINT write", logger: logger)
                                locked.events = before  // its changes are undone
                            } else if context.wrote || failure is PSQLError {
                                try await connection.query("ROLLBACK", logger: logger)
                                return nil
                            }
                        } else {
                            if isolated { try await connection.query("RELEASE SAVEPOINT write", logger: logger) }
                            changed += context.changedEvents
                        }
                        answers.append(answer)
                    }
                    var cursors: [Int64: Int64] = [:]
                    if !changed.isEmpty {
                        // Under the lock, to commit: cursors in commit order (see the type's documentation), and a
                        // notification to the other replicas, delivered when the transaction commits.
                        let rows = try await connection.query("""
                            WITH ordered AS (SELECT pg_advisory_xact_lock(\(Self.cursorLock)), pg_notify(\(notifyChannel), \(notifyPayload)))
                            UPDATE events SET cursor = nextval('harpoon_cursor') FROM ordered
                            WHERE events.id = ANY(\(Array(Set(changed))))
                            RETURNING events.id, events.cursor
                            """, logger: logger)
                        for try await (id, cursor) in rows.decode((Int64, Int64).self) { cursors[id] = cursor }
                    }
                    try await connection.query("COMMIT", logger: logger)
                    return (answers, cursors)
                } catch {
                    _ = try? await connection.query("ROLLBACK", logger: logger)
                    throw error
                }
            }
        } catch {
            for answer in answers { answer(.failure(error)) }
            for job in batch[answers.count...] { job.fail(error) }
            throw error
        }
    }
}
