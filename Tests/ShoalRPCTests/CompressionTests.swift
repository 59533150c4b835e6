import NIOCore
import RPCTestServices
import Testing

@testable import ShoalRPC

@Suite("gzip message compression")
struct CompressionTests {
    static let compressible = [UInt8]((0..<100_000).map { UInt8(truncatingIfNeeded: $0 % 7) })

    @Test("gzip requests and responses round-trip for every call kind")
    func gzipBothWays() async throws {
        try await withServer([ProbeService()], configure: { $0.responseCompression = .gzip }) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let options = CallOptions(compression: .gzip)
            let echoed = try await probe.echo(Request(payload: Self.compressible), options: options)
            #expect(echoed.payload == Self.compressible)
            let streamed = try await probe.expand(Request(count: 20, payload: Self.compressible), options: options) {
                stream in
                var count = 0
                for try await response in stream where response.payload == Self.compressible { count += 1 }
                return count
            }
            #expect(streamed == 20)
            let sum = try await probe.collect(options: options) { writer in
                for number in 1...10 {
                    try await writer.write(Request(number: Int64(number), payload: Self.compressible))
                }
            }
            #expect(sum.number == 55)
        }
    }

    @Test("the server compresses responses only for clients that accept gzip, and says so")
    func responseEncodingNegotiated() async throws {
        try await withServer([ProbeService()], configure: { $0.responseCompression = .gzip }) { _, client, _ in
            let frame = try MessageCoding.frame(
                Request(text: "z", payload: Self.compressible), encoding: .gzip, allocator: .init())
            let bytes = Array(frame.readableBytesView)
            #expect(bytes[0] == 1)
            #expect(bytes.count < Self.compressible.count / 10)
            let call = try await client.rawCall(
                Rpctest_V1_Probe.Method.Echo.descriptor, bytes: bytes, extraHeaders: [("grpc-encoding", "gzip")])
            let reply = try #require(try await call.responses.next())
            #expect(try Response(serializedBytes: reply).payload == Self.compressible)
            #expect(call.responseEncoding == .gzip)
        }
    }

    @Test("an encoding the server does not implement is UNIMPLEMENTED")
    func unknownEncoding() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let call = try await client.rawCall(
                Rpctest_V1_Probe.Method.Echo.descriptor, bytes: [1, 0, 0, 0, 1, 0],
                extraHeaders: [("grpc-encoding", "snappy")])
            await expectRPCError(.unimplemented) { while try await call.responses.next() != nil {} }
        }
    }

    @Test("a decompression bomb is RESOURCE_EXHAUSTED; corrupt gzip is INTERNAL")
    func bombs() async throws {
        try await withServer([ProbeService()], configure: { $0.maxReceiveMessageSize = 1 << 20 }) { server, client, _ in
            let zeros = [UInt8](repeating: 0, count: 8 << 20)
            let bomb = try zeros.withUnsafeBytes { try Gzip.compress($0) }
            #expect(bomb.count < 64 * 1024)
            let framed = [1] + withUnsafeBytes(of: UInt32(bomb.count).bigEndian, Array.init) + bomb
            let call = try await client.rawCall(
                Rpctest_V1_Probe.Method.Echo.descriptor, bytes: framed, extraHeaders: [("grpc-encoding", "gzip")])
            await expectRPCError(.resourceExhausted) { while try await call.responses.next() != nil {} }

            let corrupt: [UInt8] = [1, 0, 0, 0, 4, 0x1F, 0x8B, 0xFF, 0xFF]
            let second = try await client.rawCall(
                Rpctest_V1_Probe.Method.Echo.descriptor, bytes: corrupt, extraHeaders: [("grpc-encoding", "gzip")])
            await expectRPCError(.internal) { while try await second.responses.next() != nil {} }
            #expect(server.connectionCount == 1)
        }
    }
}

@Suite("requests that are not gRPC")
struct NonGRPCTests {
    @Test("a content-type that is not application/grpc gets HTTP 415, which the client maps to UNKNOWN")
    func contentType() async throws {
        try await withServer([ProbeService()]) { server, client, _ in
            let call = try await client.rawCall(
                Rpctest_V1_Probe.Method.Echo.descriptor, bytes: [0, 0, 0, 0, 0],
                extraHeaders: [("content-type", "text/plain")])
            let error = await expectRPCError(.unknown) { while try await call.responses.next() != nil {} }
            #expect(error?.message.contains("415") == true, "\(String(describing: error))")
            #expect(server.connectionCount == 1)
        }
    }
}
