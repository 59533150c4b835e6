internal import Dispatch
internal import GRDB
internal import Synchronization

/// Group commit for the events database: writes that arrive while one transaction runs are gathered and run
/// together in the next one; a write that fails rolls back alone.
///
/// A caller is answered only after the transaction holding its write has committed, so "returned" still means
/// "durable". Under load this turns thousands of small transactions a second into a few hundred larger ones.
///
/// Writes run without a savepoint each (two statements per write, a fifth of the writer's work): almost every write
/// that fails does so before it changes anything (a refused status change, an unknown event), and then there is
/// nothing to undo. Only when a write fails after changing rows is the transaction rolled back and the batch run
/// again, each write in its own savepoint.
final class WriteCoalescer: Sendable {
    private struct Job: Sendable {
        /// Runs the write inside the open transaction (in a savepoint of its own if `isolated`), and returns how to
        /// answer the caller once the transaction ends, and whether the write failed.
        let run:
            @Sendable (_ db: Database, _ isolated: Bool) -> (
                answer: @Sendable (Result<Void, any Error>) -> Void, failed: Bool
            )
        /// Answers a caller whose write never ran (the transaction failed first).
        let fail: @Sendable (any Error) -> Void
    }

    private let pool: DatabasePool
    private let queue = DispatchQueue(label: "harpoon.writer")
    private let jobs = Mutex<(pending: [Job], draining: Bool)>(([], false))

    /// Told after each transaction whether it committed.
    private let transactionEnded: @Sendable (_ committed: Bool) -> Void
    /// Told when a write's savepoint begins and when it is rolled back (the write failed alone, its rows undone), so
    /// that what the store keeps beside the database for the transaction can be undone with it.
    private let savepoint: @Sendable (_ rolledBack: Bool) -> Void

    init(
        pool: DatabasePool, transactionEnded: @escaping @Sendable (_ committed: Bool) -> Void = { _ in },
        savepoint: @escaping @Sendable (_ rolledBack: Bool) -> Void = { _ in }
    ) {
        self.pool = pool
        self.transactionEnded = transactionEnded
        self.savepoint = savepoint
    }

    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            enqueue([job(body) { continuation.resume(with: $0) }])
        }
    }

    /// Several writes, each of which succeeds or fails on its own as with ``write(_:)``, queued together (so they
    /// meet in the same transaction) and answered together: one suspension for the lot, not a task each.
    func writeEach<T: Sendable>(_ bodies: [@Sendable (Database) throws -> T]) async -> [Result<T, any Error>] {
        guard !bodies.isEmpty else { return [] }
        return await withCheckedContinuation { (continuation: CheckedContinuation<[Result<T, any Error>], Never>) in
            let results = GatheredResults(count: bodies.count, continuation)
            enqueue(bodies.enumerated().map { index, body in job(body) { results.answer(index, $0) } })
        }
    }

    /// A write as a job: `body` runs in the open transaction; `answer` is told its result once the transaction ends.
    private func job<T: Sendable>(
        _ body: @escaping @Sendable (Database) throws -> T, answer: @escaping @Sendable (Result<T, any Error>) -> Void
    ) -> Job {
        let savepoint = savepoint
        return Job(
            run: { db, isolated in
                do {
                    let value = isolated ? try Self.inSavepoint(db, savepoint) { try body(db) } : try body(db)
                    return ({ committed in answer(committed.map { value }) }, false)
                } catch {
                    return ({ _ in answer(.failure(error)) }, true)
                }
            }, fail: { error in answer(.failure(error)) })
    }

    private func enqueue(_ batch: [Job]) {
        let start = jobs.withLock { state -> Bool in
            state.pending.append(contentsOf: batch)
            if state.draining { return false }
            state.draining = true
            return true
        }
        if start { queue.async { self.drain() } }
    }

    /// Runs `body` in a savepoint of the open transaction: its writes are kept if it returns and rolled back if it
    /// throws. The statements are prepared once per connection (GRDB's `inSavepoint` parses them on every call).
    private static func inSavepoint<T>(
        _ db: Database, _ told: @Sendable (_ rolledBack: Bool) -> Void, _ body: () throws -> T
    ) throws -> T {
        try db.cachedStatement(sql: "SAVEPOINT write").execute()
        told(false)
        do {
            let value = try body()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT write").execute()
            return value
        } catch {
            try db.cachedStatement(sql: "ROLLBACK TO SAVEPOINT write").execute()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT write").execute()
            told(true)
            throw error
        }
    }

    /// Runs `batch` in one transaction and commits it, or rolls it back and returns `nil` if a write failed after
    /// changing rows (possible only when not `isolated`). A transaction that fails answers every caller with its
    /// error before throwing it.
    private func runTogether(_ batch: [Job], isolated: Bool) throws -> [@Sendable (Result<Void, any Error>) -> Void]? {
        try pool.writeWithoutTransaction { db in
            var answers: [@Sendable (Result<Void, any Error>) -> Void] = []
            answers.reserveCapacity(batch.count)
            var undo = false
            do {
                // BEGIN and COMMIT as prepared statements, kept per connection (GRDB's `inTransaction` parses them on
                // every call: a few percent of the writer at thousands of transactions a second).
                try db.cachedStatement(sql: "BEGIN IMMEDIATE TRANSACTION").execute()
                do {
                    for job in batch {
                        let changesBefore = db.totalChangesCount
                        let (answer, failed) = job.run(db, isolated)
                        if failed, !isolated, db.totalChangesCount != changesBefore {
                            undo = true
                            break
                        }
                        answers.append(answer)
                    }
                    try db.cachedStatement(sql: undo ? "ROLLBACK TRANSACTION" : "COMMIT TRANSACTION").execute()
                    transactionEnded(!undo)
                } catch {
                    if db.isInsideTransaction { try? db.cachedStatement(sql: "ROLLBACK TRANSACTION").execute() }
                    transactionEnded(false)
                    throw error
                }
            } catch {
                // The transaction failed (a write, or the commit): every write in it fails with it.
                for answer in answers { answer(.failure(error)) }
                for job in batch[answers.count...] { job.fail(error) }
                throw error
            }
            return undo ? nil : answers
        }
    }

    private func drain() {
        while true {
            let batch = jobs.withLock { state -> [Job] in
                let batch = state.pending
                state.pending = []
                if batch.isEmpty { state.draining = false }
                return batch
            }
            if batch.isEmpty { return }
            // A write that failed half-way makes the batch run again, each write in a savepoint, so it rolls back
            // alone. A transaction that fails has answered its callers itself.
            guard let answers = try? runTogether(batch, isolated: false) ?? runTogether(batch, isolated: true) else {
                continue
            }
            HarpoonMetrics.committed(writes: answers.count, engine: "sqlite")
            for answer in answers { answer(.success(())) }
        }
    }
}

/// The answers to writes queued together, each in its place: the group's caller resumes once the last has come.
final class GatheredResults<T: Sendable>: Sendable {
    private let state: Mutex<(values: [Result<T, any Error>?], remaining: Int)>
    private let continuation: CheckedContinuation<[Result<T, any Error>], Never>

    init(count: Int, _ continuation: CheckedContinuation<[Result<T, any Error>], Never>) {
        state = Mutex((Array(repeating: nil, count: count), count))
        self.continuation = continuation
    }

    func answer(_ index: Int, _ result: Result<T, any Error>) {
        let done = state.withLock { state -> [Result<T, any Error>]? in
            state.values[index] = result
            state.remaining -= 1
            return state.remaining == 0 ? state.values.compactMap { $0 } : nil
        }
        if let done { continuation.resume(returning: done) }
    }
}
