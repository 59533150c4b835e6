internal import NIOConcurrencyHelpers

/// The serving status of a server and its services, as `grpc.health.v1.Health` reports it.
///
/// Every ``RPCServer`` serves the health service from its own ``RPCServer/health``: each hosted service, and the
/// server as a whole (`""`), is SERVING once the server has started and NOT_SERVING once it begins shutting down.
/// Applications change a status when a dependency fails:
///
/// ```swift
/// server.health.setStatus(.notServing, for: "harpoon.v1.Harpoon")
/// ```
public final class HealthStatus: Sendable {
    public typealias Status = Grpc_Health_V1_HealthCheckResponse.ServingStatus

    private struct State {
        var statuses: [String: Status] = [:]
        var watchers: [Int: (service: String, continuation: AsyncStream<Status>.Continuation)] = [:]
        var nextWatcher = 0
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Sets a service's status (`""`: the server) and tells its watchers if it changed.
    public func setStatus(_ status: Status, for service: String) {
        let watchers = state.withLockedValue { state -> [AsyncStream<Status>.Continuation] in
            guard state.statuses[service] != status else { return [] }
            state.statuses[service] = status
            return state.watchers.values.filter { $0.service == service }.map(\.continuation)
        }
        for watcher in watchers { watcher.yield(status) }
    }

    /// A service's status, `nil` if the server does not know the service.
    public func status(of service: String) -> Status? {
        state.withLockedValue { $0.statuses[service] }
    }

    /// The current status, then every change.
    func watch(_ service: String) -> AsyncStream<Status> {
        let (stream, continuation) = AsyncStream.makeStream(of: Status.self, bufferingPolicy: .bufferingNewest(1))
        let id = state.withLockedValue { state -> Int in
            let id = state.nextWatcher
            state.nextWatcher += 1
            state.watchers[id] = (service, continuation)
            continuation.yield(state.statuses[service] ?? .serviceUnknown)
            return id
        }
        continuation.onTermination = { [weak self] _ in
            self?.state.withLockedValue { _ = $0.watchers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Ends every Watch call (the server is closing).
    func finishWatchers() {
        let watchers = state.withLockedValue { state in
            defer { state.watchers = [:] }
            return state.watchers.values.map(\.continuation)
        }
        for watcher in watchers { watcher.finish() }
    }
}

/// `grpc.health.v1.Health`, served by every ``RPCServer``.
struct HealthService: RPCService {
    let health: HealthStatus

    var methods: [RPCServerMethod] {
        [
            .unary(Grpc_Health_V1_Health.Method.Check.descriptor) {
                [health] (request: Grpc_Health_V1_HealthCheckRequest, _) in
                guard let status = health.status(of: request.service) else {
                    throw RPCError(code: .notFound, message: "unknown service '\(request.service)'")
                }
                return Grpc_Health_V1_HealthCheckResponse(status: status)
            },
            .serverStreaming(Grpc_Health_V1_Health.Method.Watch.descriptor) {
                [health] (
                    request: Grpc_Health_V1_HealthCheckRequest,
                    response: RPCResponseWriter<Grpc_Health_V1_HealthCheckResponse>, _
                ) in
                for await status in health.watch(request.service) {
                    try await response.write(Grpc_Health_V1_HealthCheckResponse(status: status))
                }
            },
        ]
    }
}
