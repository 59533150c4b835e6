import NIOConcurrencyHelpers
import NIOCore
import RPCTestServices
import ShoalRPC
import TestSupport
import Testing

@Suite("gRPC calls over 127.0.0.1")
struct CallTests {
    @Test("unary: request and response round-trip, metadata both ways (ASCII and -bin)")
    func unary() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            var metadata: Metadata = ["echo-me": "hello", "x-plain": "1"]
            metadata.add("echo-me-bin", binary: [0, 1, 2, 255])
            let response = try await probe.echo(
                Request(text: "héllo", number: 42, payload: [9, 8, 7]), metadata: metadata)
            #expect(response.text == "héllo")
            #expect(response.number == 42)
            #expect(response.payload == [9, 8, 7])
            #expect(response.metadata.contains("echo-me=hello"))
            #expect(response.metadata.contains("x-plain=1"))
            #expect(response.metadata.contains("echo-me-bin=0,1,2,255"))
            // Reserved headers never reach handlers as metadata.
            #expect(
                !response.metadata.contains { $0.hasPrefix("content-type") || $0.hasPrefix("te=") || $0.hasPrefix(":") }
            )
        }
    }

    @Test("response metadata reaches a streaming client's initial metadata")
    func responseMetadata() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            var metadata: Metadata = ["echo-me": "up"]
            metadata.add("echo-me-bin", binary: [1, 2, 3])
            let (initial, count) = try await client.serverStreaming(
                Rpctest_V1_Probe.Method.Echo.descriptor, request: Request(text: "x"), metadata: metadata
            ) { (stream: RPCResponseStream<Response>) in
                var count = 0
                for try await _ in stream { count += 1 }
                return (stream.initialMetadata, count)
            }
            #expect(count == 1)
            #expect(initial["echoed"] == "up")
            #expect(initial[binary: "echoed-bin"] == [1, 2, 3])
        }
    }

    @Test("server streaming delivers every message in order")
    func serverStreaming() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let numbers = try await probe.expand(Request(text: "n", count: 1000)) { stream in
                var numbers: [Int64] = []
                for try await response in stream { numbers.append(response.number) }
                return numbers
            }
            #expect(numbers == (0..<1000).map(Int64.init))
        }
    }

    @Test("client streaming sums every request")
    func clientStreaming() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let response = try await probe.collect { writer in
                for number in 1...500 { try await writer.write(Request(number: Int64(number))) }
            }
            #expect(response.number == 125_250)
            #expect(response.text == "500 requests")
        }
    }

    @Test("bidirectional streaming answers each request as it arrives")
    func bidirectional() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let answers = try await probe.converse { writer in
                for number in 0..<100 { try await writer.write(Request(text: "m\(number)", number: Int64(number))) }
            } handler: { stream in
                var answers: [Response] = []
                for try await response in stream { answers.append(response) }
                return answers
            }
            #expect(answers.count == 100)
            #expect(answers.first?.text == "M0")
            #expect(answers.last?.number == 198)
        }
    }

    @Test("many concurrent calls share one connection")
    func concurrentCalls() async throws {
        try await withServer([ProbeService()]) { server, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let sum = try await withThrowingTaskGroup(of: Int64.self) { group in
                for number in 0..<300 {
                    group.addTask { try await probe.echo(Request(number: Int64(number))).number }
                }
                return try await group.reduce(0, +)
            }
            #expect(sum == (0..<300).reduce(0, +))
            #expect(server.connectionCount == 1)
        }
    }

    @Test("an error status carries its code, its percent-encoded message and trailing metadata")
    func errorStatus() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let error = await expectRPCError(.notFound) {
                try await probe.echo(
                    Request(text: "100% ünïcode\nline", failCode: Int32(RPCError.Code.notFound.rawValue)))
            }
            #expect(error?.message == "failing as asked: 100% ünïcode\nline")
            #expect(error?.metadata["failure-reason"] == "requested")
            // Every code round-trips.
            for code in 1...16 {
                await expectRPCError(RPCError.Code(rawValue: code) ?? .unknown) {
                    try await probe.echo(Request(failCode: Int32(code)))
                }
            }
        }
    }

    @Test("an unknown method or service is UNIMPLEMENTED and the connection stays usable")
    func unknownMethod() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let missing = ProtoMethodDescriptor(
                service: "rpctest.v1.Probe", method: "Nope", kind: .unary, inputType: "", outputType: "")
            await expectRPCError(.unimplemented) {
                let _: Response = try await client.unary(missing, request: Request())
            }
            let otherService = ProtoMethodDescriptor(
                service: "other.v1.Thing", method: "Echo", kind: .unary, inputType: "", outputType: "")
            await expectRPCError(.unimplemented) {
                let _: Response = try await client.unary(otherService, request: Request())
            }
            let response = try await Rpctest_V1_Probe.Client(client).echo(Request(text: "still here"))
            #expect(response.text == "still here")
        }
    }
}

@Suite("deadlines, cancellation and limits")
struct LimitTests {
    @Test("an expired deadline ends the call with DEADLINE_EXCEEDED and the handler sees cancellation")
    func deadline() async throws {
        let log = EventLog()
        let clock = ManualTimerClock()
        var clientConfiguration = RPCClient.Configuration()
        clientConfiguration.timerClock = .manual(clock)
        try await withServer(
            [ProbeService(observer: log.observer)], configure: { $0.timerClock = .manual(clock) },
            clientConfiguration: clientConfiguration
        ) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let call = Task {
                try await probe.echo(Request(delayMs: 60_000), options: CallOptions(timeout: .milliseconds(100)))
            }
            // Both sides' deadline timers are armed before the handler starts; no time passes until the test says.
            #expect(await eventually { log.started("Echo") == 1 })
            await clock.advance(by: .milliseconds(99))
            #expect(log.cancelled("Echo") == 0, "cancelled before the deadline")
            await clock.advance(by: .milliseconds(1))
            await expectRPCError(.deadlineExceeded) { try await call.value }
            // The handler sees the cancellation and never finishes.
            #expect(await eventually { log.cancelled("Echo") == 1 })
            #expect(log.count { if case .finished("Echo") = $0 { true } else { false } } == 0)
            // A deadline that does not pass changes nothing.
            let response = try await probe.echo(Request(text: "ok"), options: CallOptions(timeout: .seconds(10)))
            #expect(response.text == "ok")
        }
    }

    @Test("the server enforces grpc-timeout on its own")
    func serverDeadline() async throws {
        let log = EventLog()
        // The client sends grpc-timeout but its own clock never moves, so only the server's deadline can fire.
        let serverClock = ManualTimerClock()
        var clientConfiguration = RPCClient.Configuration()
        clientConfiguration.timerClock = .manual(ManualTimerClock())
        try await withServer(
            [ProbeService(observer: log.observer)], configure: { $0.timerClock = .manual(serverClock) },
            clientConfiguration: clientConfiguration
        ) { _, client, _ in
            let call = Task {
                try await client.serverStreaming(
                    Rpctest_V1_Probe.Method.Expand.descriptor, request: Request(count: 1, delayMs: 60_000),
                    options: CallOptions(timeout: .milliseconds(150))
                ) { (stream: RPCResponseStream<Response>) in
                    await expectRPCError(.deadlineExceeded) { for try await _ in stream {} }
                    return true
                }
            }
            #expect(await eventually { log.started("Expand") == 1 })
            await serverClock.advance(by: .milliseconds(150))
            let sawDeadline = try await call.value
            #expect(sawDeadline)
            #expect(await eventually { log.cancelled("Expand") == 1 })
            #expect(log.count { if case .finished("Expand") = $0 { true } else { false } } == 0)
        }
    }

    @Test("cancelling the calling task resets the stream and the handler sees it")
    func clientCancellation() async throws {
        let log = EventLog()
        try await withServer([ProbeService(observer: log.observer)]) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let task = Task { try await probe.echo(Request(delayMs: 10_000)) }
            #expect(await eventually { log.started("Echo") == 1 })
            task.cancel()
            await expectRPCError(.cancelled) { try await task.value }
            #expect(await eventually { log.cancelled("Echo") == 1 })
        }
    }

    @Test("the server ending a stream early is seen by the client: status from a handler error mid-stream")
    func serverCancelsMidStream() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let seen = try await probe.converse { writer in
                try await writer.write(Request(text: "a"))
                try await writer.write(Request(failCode: Int32(RPCError.Code.aborted.rawValue)))
                // The server has ended the call; further writes fail or are dropped, never hang.
                for _ in 0..<10 { try? await writer.write(Request(text: "late")) }
            } handler: { stream in
                var texts: [String] = []
                let error = await expectRPCError(.aborted) {
                    for try await response in stream { texts.append(response.text) }
                }
                return (texts, error != nil)
            }
            #expect(seen.0 == ["A"])
            #expect(seen.1)
        }
    }

    @Test("a request over the server's limit is RESOURCE_EXHAUSTED and the connection stays usable")
    func oversizeRequest() async throws {
        try await withServer([ProbeService()], configure: { $0.maxReceiveMessageSize = 64 * 1024 }) {
            server, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            await expectRPCError(.resourceExhausted) {
                try await probe.echo(Request(payload: [UInt8](repeating: 1, count: 100 * 1024)))
            }
            let response = try await probe.echo(Request(payload: [UInt8](repeating: 2, count: 60 * 1024)))
            #expect(response.payload.count == 60 * 1024)
            #expect(server.connectionCount == 1)
        }
    }

    @Test("a response over the client's limit is RESOURCE_EXHAUSTED")
    func oversizeResponse() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            var options = CallOptions()
            options.maxReceiveMessageSize = 1024
            await expectRPCError(.resourceExhausted) {
                try await probe.echo(Request(payload: [UInt8](repeating: 1, count: 4096)), options: options)
            }
            let small = try await probe.echo(Request(payload: [1, 2, 3]), options: options)
            #expect(small.payload == [1, 2, 3])
        }
    }

    @Test("the default receive limit is 4 MiB")
    func defaultLimit() async throws {
        try await withServer([ProbeService()]) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let big = try await probe.echo(Request(payload: [UInt8](repeating: 7, count: 4 * 1024 * 1024 - 64)))
            #expect(big.payload.count == 4 * 1024 * 1024 - 64)
            await expectRPCError(.resourceExhausted) {
                try await probe.echo(Request(payload: [UInt8](repeating: 7, count: 4 * 1024 * 1024 + 1)))
            }
        }
    }
}
