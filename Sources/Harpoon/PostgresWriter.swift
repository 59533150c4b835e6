internal import HarpoonAPI
internal import Logging
internal import PostgresNIO
internal import PostgresSupport
internal import Synchronization

/// What a committed transaction handed out: the change cursors of the events it changed (given as it was about to
/// commit, after its writes ran) and the ids of the rows its deferred creations inserted, by slot.
struct CommitOutcome: Sendable {
    var cursors: [Int64: Int64] = [:]
    var created: [Int: CreatedIds] = [:]
}

/// The ids a deferred droplet creation got when its set-based statement ran.
struct CreatedIds: Sendable, Hashable {
    let dropletId: Int64
    let eventId: Int64
    let entryId: Int64
}

/// A value a write returns that is complete only once its transaction committed (cursors and deferred ids are given
/// then): ``resolved(_:)`` completes it.
protocol CommitResolved: Sendable {
    associatedtype Resolved: Sendable
    func resolved(_ outcome: CommitOutcome) throws -> Resolved
}

extension Harpoon_V1_Event: CommitResolved {
    func resolved(_ outcome: CommitOutcome) -> Self {
        var event = self
        if let cursor = outcome.cursors[id] { event.cursor = cursor }
        return event
    }
}

extension Bool: CommitResolved {
    func resolved(_ outcome: CommitOutcome) -> Self { self }
}

/// The rows a transaction locked up front, as they are in it (a write that changes one keeps this up to date).
final class LockedRows {
    struct State {
        var events: [Int64: Harpoon_V1_Event] = [:]
        /// The outbox entries locked up front that are still there, with their events.
        var entries: [Int64: Int64] = [:]
    }

    var state = State()
    /// The outbox entries the transaction locked up front, there or not: whether one is there is known without asking.
    var lockedEntries: Set<Int64> = []

    var events: [Int64: Harpoon_V1_Event] {
        get { state.events }
        set { state.events = newValue }
    }

    /// Whether an entry locked up front is still there; `nil` if it was not locked up front.
    func entryExists(_ id: Int64) -> Bool? {
        lockedEntries.contains(id) ? state.entries[id] != nil : nil
    }

    /// The event's entries are gone (a change cleared its outbox).
    func clearEntries(of event: Int64) {
        state.entries = state.entries.filter { $0.value != event }
    }
}

/// One transaction of ``PostgresWriter``, shared by the writes of its batch: its connection, the rows it locked, the
/// writes deferred to set-based statements, and what it changed.
final class WriteTransaction {
    let connection: PostgresConnection
    let logger: Logger
    let locked = LockedRows()
    /// Writes waiting for ``flush()``: run together, one statement for all the creations and one for all the event
    /// changes, instead of one statement each.
    var deferred = DeferredWrites()
    /// Events changed so far: each gets its change cursor when the transaction is about to commit.
    var changed: [Int64] = []
    var created: [Int: CreatedIds] = [:]
    /// Cursors given so far (only by the last flush, under the lock).
    var cursors: [Int64: Int64] = [:]
    private let flusher: PostgresWriter.Flusher

    init(connection: PostgresConnection, logger: Logger, flusher: @escaping PostgresWriter.Flusher) {
        self.connection = connection
        self.logger = logger
        self.flusher = flusher
    }

    /// Runs the deferred writes. Every statement that is not deferred runs it first, so that it sees what the writes
    /// before it did.
    ///
    /// - Parameter stampingCursors: the transaction holds the lock that orders cursors and commits next: the events
    ///   written get their cursors in the same statements (one row version each, not two).
    func flush(stampingCursors: Bool = false) async throws {
        guard !deferred.isEmpty else { return }
        let writes = deferred
        deferred = DeferredWrites()
        let flushed = try await flusher(connection, logger, writes, stampingCursors)
        changed += flushed.changed
        created.merge(flushed.created) { _, new in new }
        cursors.merge(flushed.cursors) { _, new in new }
    }

    /// Forgets what a write that failed did (its savepoint was rolled back).
    func rollBack(to mark: (changed: Int, locked: LockedRows.State)) {
        deferred = DeferredWrites()
        changed.removeLast(changed.count - mark.changed)
        locked.state = mark.locked
    }
}

/// What one write did in the open transaction: whether it changed rows (or deferred a change).
final class PostgresWriteContext {
    let transaction: WriteTransaction
    fileprivate(set) var wrote = false
    var locked: LockedRows { transaction.locked }

    init(transaction: WriteTransaction) {
        self.transaction = transaction
    }

    /// Runs a statement that changes rows (after the deferred writes); returns its rows.
    @discardableResult
    func write(_ query: PostgresQuery) async throws -> PostgresRowSequence {
        wrote = true
        try await transaction.flush()
        return try await transaction.connection.query(query, logger: transaction.logger)
    }

    /// Runs a statement that reads (after the deferred writes, so it sees them).
    func read(_ query: PostgresQuery) async throws -> PostgresRowSequence {
        try await transaction.flush()
        return try await transaction.connection.query(query, logger: transaction.logger)
    }

    /// Defers a droplet creation to the transaction's set-based statement; returns its slot in ``CommitOutcome/created``.
    func deferCreation(_ creation: DeferredWrites.Creation) -> Int {
        wrote = true
        return transaction.deferred.add(creation)
    }

    /// Defers an event's change to the transaction's set-based statement (running the deferred writes first if they
    /// change the same event or droplet: one statement writes each row once).
    func deferChange(_ write: EventWrite, now: Double) async throws {
        wrote = true
        if !transaction.deferred.accepts(write) { try await transaction.flush() }
        transaction.deferred.add(write, now: now)
        if write.clearsOutbox { locked.clearEntries(of: write.event.id) }
    }

    /// Defers the settlement of an entry locked up front (and there) to the transaction's set-based statement.
    func deferSettlement(_ settlement: OutboxSettlement) async throws {
        wrote = true
        if !transaction.deferred.accepts(settlement) { try await transaction.flush() }
        transaction.deferred.add(settlement)
        if case .acknowledge(let entry) = settlement { locked.state.entries[entry.id] = nil }
    }

    /// The event changed (by a statement run now): it gets a new change cursor at commit.
    func changed(event id: Int64) {
        transaction.changed.append(id)
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
        /// The outbox entries the write settles, locked up front too (after the events).
        let entries: [Int64]
        /// Runs the write in the open transaction; returns how to answer the caller once the transaction ends (given
        /// what it handed out), and the error if the write failed.
        let run: @Sendable (PostgresWriteContext) async -> (answer: Answer, failure: (any Error)?)
        let fail: @Sendable (any Error) -> Void
    }

    private typealias Answer = @Sendable (Result<CommitOutcome, any Error>) -> Void

    /// Reads and locks (`FOR UPDATE`) the events with these ids (in this order), then the outbox entries with those
    /// ids; returns the events and the entries that are there, with their events.
    typealias Locker =
        @Sendable (PostgresConnection, Logger, [Int64], [Int64]) async throws -> (
            events: [Harpoon_V1_Event], entries: [Int64: Int64]
        )
    /// Runs deferred writes in the open transaction; returns the events they changed and the ids of the rows they
    /// created, by slot.
    typealias Flusher =
        @Sendable (PostgresConnection, Logger, DeferredWrites, _ stampingCursors: Bool) async throws -> Flushed

    private let pool: PostgresPool
    private let lock: Locker
    private let flush: Flusher
    private let notifyChannel: String
    /// Sent with each notification: who committed (a replica ignores its own).
    private let notifyPayload: String
    private let jobs = Mutex<(pending: [Job], draining: Bool)>(([], false))
    /// Batches are capped so that one transaction does not hold its rows for long.
    private let maximumBatch = 512

    /// Gives changed events their cursors under the lock that orders them, and notifies the other replicas (delivered
    /// at commit).
    enum StampCursors: StatementText {
        static let sql = """
            WITH ordered AS (SELECT pg_advisory_xact_lock($1), pg_notify($2, $3))
            UPDATE events SET cursor = nextval('harpoon_cursor') FROM ordered WHERE events.id = ANY($4::int8[])
            RETURNING events.id, events.cursor
            """
    }

    /// Takes the lock that orders cursors, until the transaction ends, and notifies the other replicas (delivered at
    /// commit).
    enum LockCursors: StatementText {
        static let sql = "SELECT 1 FROM (SELECT pg_advisory_xact_lock($1), pg_notify($2, $3)) AS locked"
    }

    /// The advisory lock key that orders change cursors (any constant shared by every replica).
    static let cursorLock: Int64 = 0x5348_4F41_4C43_5552  // "SHOALCUR"

    init(
        pool: PostgresPool, notifyChannel: String, notifyPayload: String, lock: @escaping Locker,
        flush: @escaping Flusher
    ) {
        self.pool = pool
        self.lock = lock
        self.flush = flush
        self.notifyChannel = notifyChannel
        self.notifyPayload = notifyPayload
    }

    /// - Parameters:
    ///   - locking: the events the write changes: the transaction locks every write's events at its start, in id
    ///     order, so that transactions of several replicas never wait for each other in a cycle.
    ///   - entries: the outbox entries it settles, locked the same way, after the events.
    func write<T: CommitResolved>(
        locking: [Int64] = [], entries: [Int64] = [],
        _ body: @escaping @Sendable (PostgresWriteContext) async throws -> T
    ) async throws -> T.Resolved {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T.Resolved, any Error>) in
            enqueue([Self.job(locking, entries, body) { continuation.resume(with: $0) }])
        }
    }

    /// Several writes, each succeeding or failing on its own, queued together so they meet in one transaction.
    func writeEach<T: CommitResolved>(
        _ bodies: [(locking: [Int64], body: @Sendable (PostgresWriteContext) async throws -> T)]
    ) async -> [Result<T.Resolved, any Error>] {
        guard !bodies.isEmpty else { return [] }
        return await withCheckedContinuation {
            (continuation: CheckedContinuation<[Result<T.Resolved, any Error>], Never>) in
            let results = GatheredResults(count: bodies.count, continuation)
            enqueue(
                bodies.enumerated().map { index, write in
                    Self.job(write.locking, [], write.body) { results.answer(index, $0) }
                })
        }
    }

    private static func job<T: CommitResolved>(
        _ locks: [Int64], _ entries: [Int64], _ body: @escaping @Sendable (PostgresWriteContext) async throws -> T,
        answer: @escaping @Sendable (Result<T.Resolved, any Error>) -> Void
    ) -> Job {
        Job(
            locks: locks, entries: entries,
            run: { context in
                do {
                    let value = try await body(context)
                    return (
                        { committed in answer(committed.flatMap { outcome in Result { try value.resolved(outcome) } })
                        }, nil
                    )
                } catch {
                    return ({ _ in answer(.failure(error)) }, error)
                }
            }, fail: { answer(.failure($0)) })
    }

    /// Writes waiting for the next transaction.
    var waiting: Int { jobs.withLock { $0.pending.count } }

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
                let answers: [Answer]
                let outcome: CommitOutcome
                if let together = try await runTogether(batch, isolated: false) {
                    (answers, outcome) = together
                } else if let isolated = try await runTogether(batch, isolated: true) {
                    (answers, outcome) = isolated
                } else {
                    continue
                }
                HarpoonMetrics.committed(writes: answers.count, engine: "postgres")
                for answer in answers { answer(.success(outcome)) }
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
    ) async throws -> (answers: [Answer], outcome: CommitOutcome)? {
        var answers: [Answer] = []
        answers.reserveCapacity(batch.count)
        do {
            return try await pool.client.withConnection { connection in
                let logger = pool.logger
                try await connection.query("BEGIN", logger: logger)
                do {
                    let transaction = WriteTransaction(connection: connection, logger: logger, flusher: flush)
                    // Every event the batch changes, locked at once and in id order: one round trip, and no cycle of
                    // waits with another replica's transaction (which locks in the same order).
                    let ids = Set(batch.flatMap(\.locks)).sorted()
                    let entries = Set(batch.flatMap(\.entries)).sorted()
                    if !ids.isEmpty || !entries.isEmpty {
                        let found = try await lock(connection, logger, ids, entries)
                        for event in found.events { transaction.locked.events[event.id] = event }
                        transaction.locked.state.entries = found.entries
                        transaction.locked.lockedEntries = Set(entries)
                    }
                    for job in batch {
                        let context = PostgresWriteContext(transaction: transaction)
                        let mark =
                            isolated
                            ? (changed: transaction.changed.count, locked: transaction.locked.state)
                            : (0, LockedRows.State())
                        if isolated { try await connection.query("SAVEPOINT write", logger: logger) }
                        var (answer, failure) = await job.run(context)
                        if isolated, failure == nil {
                            // Its deferred writes run now, so that one that fails fails alone.
                            do { try await transaction.flush() } catch {
                                failure = error
                                answer = { _ in job.fail(error) }
                            }
                        }
                        if failure != nil {
                            if isolated {
                                try await connection.query("ROLLBACK TO SAVEPOINT write", logger: logger)
                                transaction.rollBack(to: mark)  // its changes are undone
                            } else if context.wrote || failure is PSQLError {
                                try await connection.query("ROLLBACK", logger: logger)
                                return nil
                            }
                        } else if isolated {
                            try await connection.query("RELEASE SAVEPOINT write", logger: logger)
                        }
                        answers.append(answer)
                    }
                    // What changes events ends under the lock, to commit: cursors in commit order (see the type's
                    // documentation), and a notification to the other replicas, delivered when the transaction
                    // commits. The last deferred writes run under it, giving their events cursors as they write them.
                    if !transaction.changed.isEmpty || transaction.deferred.changesEvents {
                        var binds = PostgresBindings()
                        binds.append(Self.cursorLock)
                        binds.append(notifyChannel)
                        binds.append(notifyPayload)
                        for try await _ in try await connection.execute(
                            Prepared<LockCursors, Void>(binds), logger: logger)
                        {}
                    }
                    do { try await transaction.flush(stampingCursors: true) } catch  where !isolated {
                        // A deferred write the server refused: run the batch again, each write alone.
                        try await connection.query("ROLLBACK", logger: logger)
                        return nil
                    }
                    var outcome = CommitOutcome(cursors: transaction.cursors, created: transaction.created)
                    let unstamped = Set(transaction.changed).subtracting(transaction.cursors.keys)
                    if !unstamped.isEmpty {
                        // Events written before the lock was taken (by statements that ran before a read).
                        var binds = PostgresBindings()
                        binds.append(Self.cursorLock)
                        binds.append(notifyChannel)
                        binds.append(notifyPayload)
                        binds.append(Array(unstamped))
                        let statement = Prepared<StampCursors, (Int64, Int64)>(bindings: binds) {
                            try $0.decode((Int64, Int64).self)
                        }
                        for try await (id, cursor) in try await connection.execute(statement, logger: logger) {
                            outcome.cursors[id] = cursor
                        }
                    }
                    try await connection.query("COMMIT", logger: logger)
                    return (answers, outcome)
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
