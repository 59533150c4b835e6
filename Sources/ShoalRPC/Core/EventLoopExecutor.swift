public import NIOCore

/// Runs Swift tasks on a SwiftNIO event loop.
///
/// RPC handlers run on their connection's event loop by default: a request arrives, the handler runs and its
/// response is queued in the same thread with no hop between threads. Handlers that block must not use it (see
/// ``RPCServer/Configuration/handlerExecutor``).
public final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    public let eventLoop: any EventLoop

    public init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
