internal import Dispatch
internal import GRDB
internal import Synchronization

/// Group commit for the events database: writes that arrive while one transaction runs are gathered and run
/// together in the next one, each in its own savepoint (a failing write rolls back alone).
///
/// A caller is answered only after the transaction holding its write has committed, so "returned" still means
/// "durable". Under load this turns thousands of small transactions a second into a few hundred larger ones.
final class WriteCoalescer: Sendable {
    private struct Job: Sendable {
        /// Runs the write inside the open transaction and returns how to answer the caller once it commits.
        let run: @Sendable (Database) -> @Sendable (Result<Void, any Error>) -> Void
        /// Answers a caller whose write never ran (the transaction failed first).
        let fail: @Sendable (any Error) -> Void
    }

    private let pool: DatabasePool
    private let queue = DispatchQueue(label: "harpoon.writer")
    private let jobs = Mutex<(pending: [Job], draining: Bool)>(([], false))

    init(pool: DatabasePool) {
        self.pool = pool
    }

    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let job = Job(run: { db in
                do {
                    let value = try Self.inSavepoint(db) { try body(db) }
                    return { committed in
                        switch committed {
                        case .success: continuation.resume(returning: value)
                        case .failure(let error): continuation.resume(throwing: error)
                        }
                    }
                } catch {
                    return { _ in continuation.resume(throwing: error) }
                }
            }, fail: { error in continuation.resume(throwing: error) })
            let start = jobs.withLock { state -> Bool in
                state.pending.append(job)
                if state.draining { return false }
                state.draining = true
                return true
            }
            if start { queue.async { self.drain() } }
        }
    }

    /// Runs `body` in a savepoint of the open transaction: its writes are kept if it returns and rolled back if it
    /// throws. The three statements are prepared once per connection (GRDB's `inSavepoint` parses them on every
    /// call, which showed in profiles at thousands of writes a second).
    private static func inSavepoint<T>(_ db: Database, _ body: () throws -> T) throws -> T {
        try db.cachedStatement(sql: "SAVEPOINT write").execute()
        do {
            let value = try body()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT write").execute()
            return value
        } catch {
            try db.cachedStatement(sql: "ROLLBACK TO SAVEPOINT write").execute()
            try db.cachedStatement(sql: "RELEASE SAVEPOINT write").execute()
            throw error
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
            var answers: [@Sendable (Result<Void, any Error>) -> Void] = []
            answers.reserveCapacity(batch.count)
            let outcome = Result<Void, any Error> {
                try pool.writeWithoutTransaction { db in
                    try db.inTransaction {
                        for job in batch { answers.append(job.run(db)) }
                        return .commit
                    }
                }
            }
            for answer in answers { answer(outcome) }
            if case .failure(let error) = outcome {
                // The transaction failed before every write ran: the rest fail with it.
                for job in batch[answers.count...] { job.fail(error) }
            }
        }
    }
}
