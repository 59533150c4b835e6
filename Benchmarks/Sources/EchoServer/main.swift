// The Shoal side of `make bench-rpc`: bench.v1.Echo (../shared/anchors/rpc/echo.proto) on ShoalRPC.
//
// usage: EchoServer PORT [HOST] [--global-executor]
import Foundation
import ShoalRPC

struct EchoService: Bench_V1_Echo.ServiceProtocol {
    func unary(request: Bench_V1_EchoRequest, context: ServerContext) async throws -> Bench_V1_EchoResponse {
        Bench_V1_EchoResponse(payload: request.payload)
    }

    func stream(
        request: Bench_V1_StreamRequest, response: RPCResponseWriter<Bench_V1_EchoResponse>, context: ServerContext
    ) async throws {
        let message = Bench_V1_EchoResponse(payload: [UInt8](repeating: 0x78, count: Int(request.size)))
        for _ in 0..<request.count { try await response.write(message) }
    }
}

let arguments = CommandLine.arguments.dropFirst()
guard let portText = arguments.first, let port = Int(portText) else {
    print("usage: EchoServer PORT [HOST] [--global-executor]")
    exit(2)
}
var configuration = RPCServer.Configuration(
    host: arguments.dropFirst().first { !$0.hasPrefix("--") } ?? "127.0.0.1", port: port)
if arguments.contains("--global-executor") { configuration.handlerExecutor = .global }
let server = RPCServer(configuration: configuration, services: [EchoService()])
let address = try await server.start()
print("EchoServer listening on \(address)")
while true { try await Task.sleep(for: .seconds(3600)) }
