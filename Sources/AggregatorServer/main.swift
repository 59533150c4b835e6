import ArgumentParser
import NIOCore
import NIOPosix

// Swift concurrency runs on the NIO event loops: Hummingbird's handlers and the RPC clients' I/O share threads, so a
// request does not hop between the concurrency pool and the event loops at every await (measured by make bench-api).
_ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
do {
    let command = try AggregatorCommand.parse()
    try await command.run()
} catch {
    AggregatorCommand.exit(withError: error)
}
