internal import Synchronization

/// Gathers items that many tasks submit at once into batches, one call per batch.
///
/// When a service makes the same small call for every event (deliver this, report that), the cost is in the calls,
/// not in the items. A batcher sends an item at once when fewer than `maxInFlight` calls are out; otherwise the item
/// waits and goes with everything else that arrived meanwhile, in the next call, as soon as one returns. So it adds
/// no delay when idle, and under load the batches grow by themselves with the rate, up to `maxBatch` items.
///
/// ```swift
/// let reports = CallBatcher<Report, Outcome>(maxInFlight: 2) { batch in
///     await harpoon.reportMany(batch)  // one result per item, in order
/// }
/// let outcome = try await reports.submit(report)
/// ```
///
/// Each item gets its own result: `send` returns one per item, in order; an item without one (a short answer) fails
/// with ``RPCError`` `internal`. Items are sent in the order they were submitted.
public final class CallBatcher<Item: Sendable, Outcome: Sendable>: Sendable {
    /// Sends one batch and returns one result per item, in order.
    public typealias Send = @Sendable ([Item]) async -> [Result<Outcome, any Error>]

    private struct Waiting: Sendable {
        let item: Item
        let continuation: CheckedContinuation<Outcome, any Error>
    }

    private struct State {
        var queue: [Waiting] = []
        var inFlight = 0
    }

    /// The most items in one call.
    public let maxBatch: Int
    /// The most calls out at once.
    public let maxInFlight: Int
    private let send: Send
    private let state = Mutex(State())

    /// - Parameters:
    ///   - maxBatch: the most items in one call (at least 1).
    ///   - maxInFlight: the most calls out at once (at least 1).
    ///   - send: makes one call for a batch.
    public init(maxBatch: Int = 512, maxInFlight: Int = 2, send: @escaping Send) {
        self.maxBatch = max(1, maxBatch)
        self.maxInFlight = max(1, maxInFlight)
        self.send = send
    }

    /// A batcher for an RPC that answers a batch with one outcome per item, each carrying a gRPC status code (0 for
    /// OK) and message: a failed call fails every item of its batch; an item whose code is not 0 fails with that
    /// ``RPCError``; the others get `value(outcome)`.
    public convenience init<Response: Sendable>(
        maxBatch: Int = 512,
        maxInFlight: Int = 2,
        call: @escaping @Sendable ([Item]) async throws -> [Response],
        status: @escaping @Sendable (Response) -> (code: UInt32, message: String),
        value: @escaping @Sendable (Response) -> Outcome
    ) {
        self.init(maxBatch: maxBatch, maxInFlight: maxInFlight) { batch in
            do {
                return try await call(batch).map { response in
                    let (code, message) = status(response)
                    if let error = RPCError(batchedCode: code, message: message) { return .failure(error) }
                    return .success(value(response))
                }
            } catch {
                return Array(repeating: .failure(error), count: batch.count)
            }
        }
    }

    /// Items waiting for a call.
    public var waiting: Int { state.withLock { $0.queue.count } }

    /// Sends `item` in the next batch and returns its result.
    public func submit(_ item: Item) async throws -> Outcome {
        try await withCheckedThrowingContinuation { continuation in
            let batch = state.withLock { state -> [Waiting]? in
                state.queue.append(Waiting(item: item, continuation: continuation))
                guard state.inFlight < maxInFlight else { return nil }
                state.inFlight += 1
                return Self.take(&state.queue, upTo: maxBatch)
            }
            if let batch { Task { await self.run(batch) } }
        }
    }

    private static func take(_ queue: inout [Waiting], upTo limit: Int) -> [Waiting] {
        guard queue.count > limit else {
            defer { queue.removeAll(keepingCapacity: true) }
            return queue
        }
        let batch = Array(queue.prefix(limit))
        queue.removeFirst(limit)
        return batch
    }

    /// Sends `batch`, then whatever queued up meanwhile, until the queue is empty.
    private func run(_ first: [Waiting]) async {
        var batch = first
        while true {
            let results = await send(batch.map(\.item))
            for (index, waiting) in batch.enumerated() {
                if index < results.count {
                    waiting.continuation.resume(with: results[index])
                } else {
                    waiting.continuation.resume(
                        throwing: RPCError(
                            code: .internal, message: "a batch of \(batch.count) got \(results.count) results"
                        ))
                }
            }
            let next = state.withLock { state -> [Waiting]? in
                guard !state.queue.isEmpty else {
                    state.inFlight -= 1
                    return nil
                }
                return Self.take(&state.queue, upTo: maxBatch)
            }
            guard let next else { return }
            batch = next
        }
    }
}

extension RPCError {
    /// The error a batched call's per-item status stands for: `nil` for code 0 (OK).
    public init?(batchedCode code: UInt32, message: String) {
        guard code != 0 else { return nil }
        self.init(code: Code(rawValue: Int(code)) ?? .unknown, message: message)
    }

    /// The per-item status of a batched call for `error`: its code (`unknown` for an error that is not an
    /// ``RPCError``) and message.
    public static func batchedStatus(of error: any Error) -> (code: UInt32, message: String) {
        if let error = error as? RPCError { return (UInt32(error.code.rawValue), error.message) }
        if let error = error as? any RPCStatusConvertible {
            return (UInt32(error.rpcError.code.rawValue), error.rpcError.message)
        }
        return (UInt32(Code.unknown.rawValue), "\(error)")
    }
}
