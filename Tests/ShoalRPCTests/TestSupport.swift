import NIOConcurrencyHelpers
import NIOCore
import RPCTestServices
import ShoalRPC
import TestSupport
import Testing

typealias Request = Rpctest_V1_ProbeRequest
typealias Response = Rpctest_V1_ProbeResponse

/// Records what the probe service's handlers report.
final class EventLog: Sendable {
    private let events = NIOLockedValueBox<[ProbeService.Event]>([])

    var observer: @Sendable (ProbeService.Event) -> Void {
        { [events] event in events.withLockedValue { $0.append(event) } }
    }

    func count(_ predicate: (ProbeService.Event) -> Bool) -> Int {
        events.withLockedValue { $0.filter(predicate).count }
    }

    func cancelled(_ method: String) -> Int {
        count { if case .cancelled(let name) = $0 { name == method } else { false } }
    }

    func started(_ method: String) -> Int {
        count { if case .started(let name) = $0 { name == method } else { false } }
    }
}

/// Starts a server on 127.0.0.1 with `services`, runs `body` with it and a client connected to it, stops both.
func withServer<T>(
    _ services: [any RPCService],
    configure: (inout RPCServer.Configuration) -> Void = { _ in },
    interceptors: [any RPCServerInterceptor] = [],
    clientInterceptors: [any RPCClientInterceptor] = [],
    clientConfiguration: RPCClient.Configuration = RPCClient.Configuration(),
    _ body: (RPCServer, RPCClient, Int) async throws -> T
) async throws -> T {
    var configuration = RPCServer.Configuration(host: "127.0.0.1", port: 0)
    configure(&configuration)
    let server = RPCServer(configuration: configuration, services: services, interceptors: interceptors)
    let address = try await server.start()
    let port = try #require(address.port)
    let client = RPCClient(
        targets: [("127.0.0.1", port)], configuration: clientConfiguration, interceptors: clientInterceptors)
    do {
        let result = try await body(server, client, port)
        await client.close()
        await server.shutdownGracefully(timeout: .seconds(5))
        return result
    } catch {
        await client.close()
        await server.shutdownGracefully(timeout: .seconds(5))
        throw error
    }
}

/// Expects `body` to throw an `RPCError` with `code`; returns it.
@discardableResult
func expectRPCError<T>(
    _ code: RPCError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> T
) async -> RPCError? {
    do {
        let value = try await body()
        Issue.record("expected \(code), got a result: \(value)", sourceLocation: sourceLocation)
        return nil
    } catch let error as RPCError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected RPCError \(code), got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}
