internal import NIOConcurrencyHelpers

/// The messages received on one stream, handed from the connection's event loop to the task that reads them.
///
/// The event loop pushes; one reader pulls. The queue counts the bytes it holds so the connection can stop
/// replenishing the stream's HTTP/2 window while the reader is behind (``withholdIfAbove(_:)``), and tells it to
/// resume (`onCaughtUp`) once the reader has drained half of that.
final class InboundMessageQueue: @unchecked Sendable {
    private struct State {
        var messages: [[UInt8]] = []
        var head = 0
        var bufferedBytes = 0
        var windowWithheld = false
        var withheldLimit = 0
        /// `nil` while open; then `.success` for a clean end or the error that ended the stream.
        var end: Result<Void, RPCError>?
        var waiter: CheckedContinuation<[UInt8]?, any Error>?
    }

    private let state = NIOLockedValueBox(State())
    /// Called (from the reader's context) when the reader drains a backlog that made the window be withheld.
    var onCaughtUp: (@Sendable () -> Void)?

    init() {}

    // MARK: Producer (event loop)

    func push(_ message: [UInt8]) {
        let waiter: CheckedContinuation<[UInt8]?, any Error>? = state.withLockedValue { state in
            guard state.end == nil else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.messages.append(message)
            state.bufferedBytes += message.count
            return nil
        }
        waiter?.resume(returning: message)
    }

    /// Ends the stream: the reader sees the buffered messages, then `nil` (success) or the error.
    func finish(_ result: Result<Void, RPCError>) {
        let waiter: CheckedContinuation<[UInt8]?, any Error>? = state.withLockedValue { state in
            guard state.end == nil else { return nil }
            state.end = result
            let waiter = state.waiter
            state.waiter = nil
            return waiter
        }
        guard let waiter else { return }
        switch result {
        case .success: waiter.resume(returning: nil)
        case .failure(let error): waiter.resume(throwing: error)
        }
    }

    /// Ends the stream with an error now, dropping buffered messages (cancellation, a limit exceeded).
    func fail(_ error: RPCError) {
        let waiter: CheckedContinuation<[UInt8]?, any Error>? = state.withLockedValue { state in
            state.messages = []
            state.head = 0
            state.bufferedBytes = 0
            if state.end == nil || (try? state.end?.get()) != nil { state.end = .failure(error) }
            let waiter = state.waiter
            state.waiter = nil
            return waiter
        }
        waiter?.resume(throwing: error)
    }

    /// If more than `limit` bytes wait for the reader, remembers that the window is withheld and returns `true`.
    func withholdIfAbove(_ limit: Int) -> Bool {
        state.withLockedValue { state in
            guard state.bufferedBytes >= limit else { return false }
            state.windowWithheld = true
            state.withheldLimit = limit
            return true
        }
    }

    var isFinished: Bool { state.withLockedValue { $0.end != nil && $0.head == $0.messages.count } }

    // MARK: Consumer

    /// The next message, `nil` at a clean end; throws the error that ended the stream.
    func next() async throws -> [UInt8]? {
        enum Step {
            case message([UInt8], caughtUp: Bool)
            case end(Result<Void, RPCError>)
            case wait
        }
        let step: Step = state.withLockedValue { state in
            if state.head < state.messages.count {
                let message = state.messages[state.head]
                state.head += 1
                state.bufferedBytes -= message.count
                if state.head == state.messages.count {
                    state.messages.removeAll(keepingCapacity: true)
                    state.head = 0
                }
                var caughtUp = false
                if state.windowWithheld, state.bufferedBytes < state.withheldLimit / 2 {
                    state.windowWithheld = false
                    caughtUp = true
                }
                return .message(message, caughtUp: caughtUp)
            }
            if let end = state.end { return .end(end) }
            return .wait
        }
        switch step {
        case .message(let message, let caughtUp):
            if caughtUp { onCaughtUp?() }
            return message
        case .end(let result):
            try result.get()
            return nil
        case .wait:
            return try await withCheckedThrowingContinuation { continuation in
                let immediate: Result<[UInt8]?, RPCError>? = state.withLockedValue { state in
                    if state.head < state.messages.count {
                        let message = state.messages[state.head]
                        state.head += 1
                        state.bufferedBytes -= message.count
                        return .success(message)
                    }
                    if let end = state.end {
                        switch end {
                        case .success: return .success(nil)
                        case .failure(let error): return .failure(error)
                        }
                    }
                    state.waiter = continuation
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        }
    }
}
