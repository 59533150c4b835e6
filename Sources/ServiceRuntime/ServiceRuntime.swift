package import ArgumentParser
internal import Logging
package import NIOCore
internal import NIOPosix
internal import RequestContext
internal import ServiceLifecycle
package import ShoalRPC
internal import ShoalTracing
internal import UnixSignals

#if canImport(Glibc)
    internal import Glibc
#endif

/// A service's command: its options include the ones every service shares (metrics, logging), applied by
/// ``ServiceRuntime/main(_:)`` before the command runs.
package protocol ServiceCommand: AsyncParsableCommand {
    var runtime: RuntimeOptions { get }
}

/// What every Shoal executable shares: parsing addresses, the readiness line, running until SIGTERM or SIGINT.
package enum ServiceRuntime {
    /// Makes Swift concurrency run its tasks on the SwiftNIO event loops that carry the service's RPCs, instead of on
    /// a pool of its own. Call it first thing in `main.swift`, before any task starts.
    ///
    /// A service's work is mostly "an RPC arrives, the database or another service is asked, an RPC goes out": with
    /// one set of threads, each of those steps no longer wakes another thread to continue (the context switches were
    /// an eighth of Harpoon's time under the pipeline benchmark).
    package static func runConcurrencyOnEventLoops() {
        _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    }

    /// Parses the command line as `Command` and runs it; a bad command line or a failure exits with its message (the
    /// whole of every executable's `main.swift`, after ``runConcurrencyOnEventLoops()``).
    package static func main<Command: AsyncParsableCommand>(_: Command.Type) async {
        raiseFileLimit()
        do {
            var command = try Command.parse()
            if let service = command as? any ServiceCommand {
                let name = Command.configuration.commandName ?? "shoal"
                bootstrapLogging(service: name, service.runtime.logging)
                if let endpoint = service.runtime.otlpEndpoint {
                    try await withTracing(to: endpoint, service: name) { try await command.run() }
                    return
                }
            }
            try await command.run()
        } catch {
            Command.exit(withError: error)
        }
    }

    /// Runs `body` with spans recorded and exported to the OTLP collector at `endpoint` (batched, in the background),
    /// then sends what is left.
    static func withTracing(to endpoint: String, service: String, _ body: () async throws -> Void) async throws {
        // A plain client: the exporter's own calls are not traced.
        let exporter = OTLPExporter(client: RPCClient(targets: try addresses(endpoint)), service: service)
        Spans.install(exporter)
        defer { Spans.install(nil) }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await exporter.run() }
                try await body()
                group.cancelAll()
            }
        } catch {
            await exporter.flush()
            await exporter.close()
            throw error
        }
        await exporter.flush()
        await exporter.close()
    }

    /// Raises the soft limit on open files to the hard one: a router holds a connection per agent, a fleet process
    /// one per agent it runs, and the usual soft limit (1,024) is far below a fleet's.
    package static func raiseFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }

    /// Writes a line to standard output at once (unbuffered), so a launcher waiting for readiness sees it.
    package static func announce(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
    }

    /// Writes a line to standard error at once.
    package static func complain(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }

    /// A client for another Shoal service: its connections come back quickly after that service restarts (100 ms,
    /// growing 1.6× to at most 2 s, instead of gRPC's 1 s to 120 s for clients of distant servers), so a restarted
    /// scheduler hears its routers, and Harpoon its scheduler, within a few hundred milliseconds.
    package static func serviceClient(_ targets: [(host: String, port: Int)]) -> RPCClient {
        var configuration = RPCClient.Configuration()
        configuration.backoff.initial = .milliseconds(100)
        configuration.backoff.maximum = .seconds(2)
        configuration.connectTimeout = .seconds(5)
        return RPCClient(targets: targets, configuration: configuration, interceptors: clientInterceptors)
    }

    /// Parses `host:port` (or `[v6]:port`).
    /// Comma-separated `host:port` addresses (a service's replicas), at least one.
    package static func addresses(_ text: String) throws(RPCError) -> [(host: String, port: Int)] {
        var addresses: [(host: String, port: Int)] = []
        for part in text.split(separator: ",") { addresses.append(try address(String(part))) }
        guard !addresses.isEmpty else {
            throw RPCError(code: .invalidArgument, message: "'\(text)' names no host:port")
        }
        return addresses
    }

    package static func address(_ text: String) throws(RPCError) -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port)
        else {
            throw RPCError(code: .invalidArgument, message: "'\(text)' is not host:port")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw RPCError(code: .invalidArgument, message: "'\(text)' has no host") }
        return (host, port)
    }

    /// How long a service drains on SIGTERM or SIGINT before what is left is cancelled.
    package static let drainDeadline = Duration.seconds(15)

    /// Runs the started `server` and its `background` workers as one swift-service-lifecycle `ServiceGroup` until
    /// SIGTERM or SIGINT: then the workers are cancelled (each stops at its next step), the server stops taking calls
    /// and finishes those in flight (up to 2 s), and the process exits. Past ``drainDeadline`` the group cancels what
    /// is left. A worker may finish its job and end (a scheduler's recovery does); one that fails shuts the whole
    /// service down, so that its supervisor restarts it rather than leaving it half alive. The server ending ends the
    /// service too. Every task has a parent: the group's.
    ///
    /// With no server (a hypervisor fleet is only clients), the workers are the service: the first to end ends it.
    package static func run(
        server: RPCServer?, metrics: (any Channel)? = nil, background: [@Sendable () async -> Void] = [],
        name: String = "shoal"
    ) async {
        var logger = Logger(label: name)
        logger.logLevel = .notice
        // Shut down in reverse order: the workers first, then the server drains.
        let serving =
            server.map { server in
                [
                    ServiceGroupConfiguration.ServiceConfiguration(
                        service: RPCServerService(server: server), successTerminationBehavior: .gracefullyShutdownGroup,
                        failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: "rpc-server"
                    )
                ]
            } ?? []
        let services =
            serving
            + background.enumerated().map { index, body in
                ServiceGroupConfiguration.ServiceConfiguration(
                    service: WorkerService(body: body),
                    successTerminationBehavior: server == nil ? .gracefullyShutdownGroup : .ignore,
                    failureTerminationBehavior: .gracefullyShutdownGroup, serviceName: "worker-\(index + 1)"
                )
            }
        var configuration = ServiceGroupConfiguration(
            services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        configuration.maximumGracefulShutdownDuration = drainDeadline
        do {
            try await ServiceGroup(configuration: configuration).run()
        } catch {
            logger.error("\(name) stopped with an error: \(error)")
        }
        try? await metrics?.close()
    }
}

/// An RPC server that is already listening, as a lifecycle service: on graceful shutdown it stops taking calls (a
/// GOAWAY on every connection), gives the calls in flight ``callDrain`` to finish, then closes what is left. Shoal's
/// unary calls take milliseconds; what is left after the drain are long-lived streams (an agent's, a watcher's),
/// whose clients reconnect elsewhere or resume from their cursor.
struct RPCServerService: Service {
    static let callDrain = Duration.seconds(2)
    let server: RPCServer

    func run() async throws {
        // Until the group shuts down gracefully (or is cancelled, when the drain is skipped).
        try? await gracefulShutdown()
        await server.shutdownGracefully(timeout: Self.callDrain)
    }
}

/// A background worker (an outbox, a router's flushes, a watcher) as a lifecycle service: cancelled on graceful
/// shutdown.
struct WorkerService: Service {
    let body: @Sendable () async -> Void

    func run() async {
        await cancelWhenGracefulShutdown { await body() }
    }
}
