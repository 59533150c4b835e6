import NIOConcurrencyHelpers
import NIOCore
import RPCTestServices
import TestSupport
import Testing

@testable import ShoalRPC

/// Rejects calls without the right bearer token.
struct AuthInterceptor: RPCServerInterceptor {
    let seen = NIOLockedValueBox<[String]>([])

    func intercept(context: ServerContext, next: @Sendable (ServerContext) async throws -> Void) async throws {
        seen.withLockedValue { $0.append(context.descriptor.method) }
        guard context.metadata["authorization"] == "Bearer secret" else {
            throw RPCError(code: .unauthenticated, message: "missing or wrong token")
        }
        try await next(context)
    }
}

/// Adds the token to every call.
struct TokenInterceptor: RPCClientInterceptor {
    let calls = NIOLockedValueBox(0)

    func intercept<Result: Sendable>(
        _ request: ClientRequestContext,
        next: @Sendable (ClientRequestContext) async throws -> Result
    ) async throws -> Result {
        calls.withLockedValue { $0 += 1 }
        var request = request
        request.metadata.add("authorization", "Bearer secret")
        return try await next(request)
    }
}

@Suite("client behaviour and interceptors")
struct ClientTests {
    @Test("server and client interceptors wrap every call kind")
    func interceptors() async throws {
        let auth = AuthInterceptor()
        try await withServer([ProbeService()], interceptors: [auth]) { _, client, port in
            await expectRPCError(.unauthenticated) { try await Rpctest_V1_Probe.Client(client).echo(Request()) }
            let token = TokenInterceptor()
            let authorised = RPCClient(targets: [("127.0.0.1", port)], interceptors: [token])
            let probe = Rpctest_V1_Probe.Client(authorised)
            #expect(try await probe.echo(Request(text: "in")).text == "in")
            let count = try await probe.expand(Request(count: 3)) { stream in
                var count = 0
                for try await _ in stream { count += 1 }
                return count
            }
            #expect(count == 3)
            #expect(try await probe.collect { try await $0.write(Request(number: 5)) }.number == 5)
            #expect(token.calls.withLockedValue { $0 } == 3)
            #expect(auth.seen.withLockedValue { $0 } == ["Echo", "Echo", "Expand", "Collect"])
            await authorised.close()
        }
    }

    @Test("calls spread round-robin over several addresses")
    func roundRobin() async throws {
        let first = EventLog()
        let second = EventLog()
        let serverA = RPCServer(configuration: .init(), services: [ProbeService(observer: first.observer)])
        let serverB = RPCServer(configuration: .init(), services: [ProbeService(observer: second.observer)])
        let portA = try #require(try await serverA.start().port)
        let portB = try #require(try await serverB.start().port)
        let client = RPCClient(targets: [("127.0.0.1", portA), ("127.0.0.1", portB)])
        let probe = Rpctest_V1_Probe.Client(client)
        for _ in 0..<10 { _ = try await probe.echo(Request()) }
        #expect(first.started("Echo") == 5)
        #expect(second.started("Echo") == 5)
        await client.close()
        await serverA.shutdownGracefully()
        await serverB.shutdownGracefully()
    }

    @Test(
        "an address that refuses connections costs a call nothing while another is up: nothing was sent, so the call goes on to the next"
    )
    func unreachableAddressSkipped() async throws {
        let dead = RPCServer(configuration: .init(), services: [])
        let deadPort = try #require(try await dead.start().port)
        await dead.shutdownGracefully()
        try await withServer([ProbeService()]) { _, _, port in
            // Dead first, and again each time its backoff ends: no call fails, without any retry policy.
            var configuration = RPCClient.Configuration()
            configuration.backoff.initial = .milliseconds(1)
            configuration.backoff.maximum = .milliseconds(1)
            let client = RPCClient(
                targets: [("127.0.0.1", deadPort), ("127.0.0.1", port)], configuration: configuration)
            let probe = Rpctest_V1_Probe.Client(client)
            for index in 0..<20 {
                let text = try await probe.echo(Request(text: "call \(index)")).text
                #expect(text == "call \(index)")
            }
            await client.close()
            // With no address up, the call fails as unavailable.
            let nowhere = RPCClient(targets: [("127.0.0.1", deadPort)])
            await expectRPCError(.unavailable) {
                try await Rpctest_V1_Probe.Client(nowhere).echo(Request(text: "once"))
            }
            await nowhere.close()
        }
    }

    @Test("a retryable failure is retried on the next address; without a policy it is not")
    func retries() async throws {
        // A port that refuses: bind a server, note its port, stop it.
        let dead = RPCServer(configuration: .init(), services: [])
        let deadPort = try #require(try await dead.start().port)
        await dead.shutdownGracefully()
        try await withServer([ProbeService()]) { _, _, port in
            let client = RPCClient(targets: [("127.0.0.1", deadPort), ("127.0.0.1", port)])
            let probe = Rpctest_V1_Probe.Client(client)
            // A failure the server answers (the call reached it) is not retried without a policy.
            await expectRPCError(.unavailable) {
                try await probe.echo(Request(failCode: Int32(RPCError.Code.unavailable.rawValue)))
            }
            let retrying = CallOptions(timeout: .seconds(10), retry: RetryPolicy(maxAttempts: 3))
            for _ in 0..<6 {
                let text = try await probe.echo(Request(text: "again"), options: retrying).text
                #expect(text == "again")
            }
            // Codes not marked retryable fail at once.
            await expectRPCError(.aborted) {
                try await probe.echo(Request(failCode: Int32(RPCError.Code.aborted.rawValue)), options: retrying)
            }
            await client.close()
        }
    }

    @Test("clients wait out gRPC's connection backoff, and retries use full jitter from 100 ms")
    func backoffDefaults() {
        #expect(RPCClient.Configuration().backoff == .grpcConnection)
        for _ in 0..<100 {
            let delay = RetryPolicy().backoff(afterAttempt: 3)
            #expect(delay >= .zero && delay <= .milliseconds(400))
        }
    }

    @Test("a peer that is not gRPC: HTTP status maps to a gRPC code")
    func httpStatusMapping() {
        #expect(ClientStreamStateMachine.code(forHTTPStatus: 400) == .internal)
        #expect(ClientStreamStateMachine.code(forHTTPStatus: 401) == .unauthenticated)
        #expect(ClientStreamStateMachine.code(forHTTPStatus: 403) == .permissionDenied)
        #expect(ClientStreamStateMachine.code(forHTTPStatus: 404) == .unimplemented)
        #expect(ClientStreamStateMachine.code(forHTTPStatus: 503) == .unavailable)
        #expect(ClientStreamStateMachine.code(forHTTPStatus: 500) == .unknown)
    }
}

@Suite("grpc.health.v1.Health")
struct HealthTests {
    typealias HealthRequest = Grpc_Health_V1_HealthCheckRequest
    typealias HealthResponse = Grpc_Health_V1_HealthCheckResponse

    @Test("every server answers Check for itself and each service; unknown services are NOT_FOUND")
    func check() async throws {
        try await withServer([ProbeService()]) { server, client, _ in
            func check(_ service: String) async throws -> HealthResponse.ServingStatus {
                let response: HealthResponse = try await client.unary(
                    Grpc_Health_V1_Health.Method.Check.descriptor, request: HealthRequest(service: service))
                return response.status
            }
            let overall = try await check("")
            let probe = try await check("rpctest.v1.Probe")
            #expect(overall == .serving)
            #expect(probe == .serving)
            await expectRPCError(.notFound) { try await check("nope.v1.Nothing") }
            server.health.setStatus(.notServing, for: "rpctest.v1.Probe")
            let changed = try await check("rpctest.v1.Probe")
            #expect(changed == .notServing)
        }
    }

    @Test("Watch sends the current status, then every change")
    func watch() async throws {
        try await withServer([ProbeService()]) { server, client, _ in
            let seen = NIOLockedValueBox<[HealthResponse.ServingStatus]>([])
            let watcher = Task {
                try await client.serverStreaming(
                    Grpc_Health_V1_Health.Method.Watch.descriptor, request: HealthRequest(service: "rpctest.v1.Probe")
                ) {
                    (stream: RPCResponseStream<HealthResponse>) in
                    for try await response in stream {
                        seen.withLockedValue { $0.append(response.status) }
                        if seen.withLockedValue({ $0.count }) == 3 { break }
                    }
                }
            }
            #expect(await eventually { seen.withLockedValue { $0 } == [.serving] })
            server.health.setStatus(.notServing, for: "rpctest.v1.Probe")
            #expect(await eventually { seen.withLockedValue { $0 } == [.serving, .notServing] })
            server.health.setStatus(.serving, for: "rpctest.v1.Probe")
            try await watcher.value
            #expect(seen.withLockedValue { $0 } == [.serving, .notServing, .serving])
        }
    }
}
