import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RPCTestServices
import TestSupport
import Testing

@testable import ShoalRPC

/// Streams `count` responses of `size` bytes and counts how many it has written.
struct FloodService: RPCService {
    let written = NIOLockedValueBox(0)

    var methods: [RPCServerMethod] {
        [
            .serverStreaming(Rpctest_V1_Probe.Method.Expand.descriptor) {
                [written] (request: Request, writer: RPCResponseWriter<Response>, _) in
                let message = Response(payload: [UInt8](repeating: 0xAB, count: request.payload.count))
                for _ in 0..<request.count {
                    try await writer.write(message)
                    written.withLockedValue { $0 += 1 }
                }
            }
        ]
    }
}

@Suite("connections: flow control, GOAWAY, malformed input")
struct ConnectionTests {
    @Test("a slow reader stops its writer: the server writes a bounded number of messages ahead")
    func flowControl() async throws {
        let flood = FloodService()
        try await withServer([flood]) { _, client, _ in
            let total = 2000
            let messageSize = 64 * 1024  // 125 MiB in all
            let result = try await client.serverStreaming(
                Rpctest_V1_Probe.Method.Expand.descriptor,
                request: Request(count: UInt32(total), payload: [UInt8](repeating: 0, count: messageSize))
            ) { (stream: RPCResponseStream<Response>) in
                var iterator = stream.makeAsyncIterator()
                _ = try await iterator.next()
                // The reader pauses. Watch the writer for a while: it must stall at a bound set by the windows and
                // watermarks (256 KiB each), far below the 2000 messages it wants to send.
                var ahead = 0
                let until = ContinuousClock.now.advanced(by: .milliseconds(400))
                while ContinuousClock.now < until {
                    ahead = max(ahead, flood.written.withLockedValue { $0 })
                    try await Task.sleep(for: .milliseconds(10))
                }
                var received = 1
                while let message = try await iterator.next() {
                    #expect(message.payload.count == messageSize)
                    received += 1
                }
                return (ahead, received)
            }
            #expect(result.0 > 0)
            #expect(result.0 <= 40, "the server ran \(result.0) messages ahead of a paused reader")
            #expect(result.1 == total)
        }
    }

    @Test("a slow server reader stops a client writer")
    func clientFlowControl() async throws {
        let log = EventLog()
        try await withServer([ProbeService(observer: log.observer)]) { _, client, _ in
            let sent = NIOLockedValueBox(0)
            let probe = Rpctest_V1_Probe.Client(client)
            // The handler sleeps 200 ms on the first request; meanwhile the client tries to send 64 MiB.
            let task = Task {
                try await probe.collect { writer in
                    try await writer.write(Request(number: 1, delayMs: 200))
                    for _ in 0..<1024 {
                        try await writer.write(Request(number: 1, payload: [UInt8](repeating: 1, count: 64 * 1024)))
                        sent.withLockedValue { $0 += 1 }
                    }
                }
            }
            #expect(await eventually { log.started("Collect") == 1 })
            try await Task.sleep(for: .milliseconds(100))
            let ahead = sent.withLockedValue { $0 }
            #expect(ahead <= 40, "the client ran \(ahead) messages ahead of a sleeping handler")
            let response = try await task.value
            #expect(response.number == 1025)
        }
    }

    @Test("graceful shutdown: GOAWAY lets in-flight calls finish and refuses new ones")
    func goAway() async throws {
        let log = EventLog()
        let server = RPCServer(
            configuration: .init(host: "127.0.0.1", port: 0), services: [ProbeService(observer: log.observer)])
        let port = try #require(try await server.start().port)
        let client = RPCClient(targets: [("127.0.0.1", port)])
        let probe = Rpctest_V1_Probe.Client(client)
        let inFlight = Task { try await probe.echo(Request(text: "slow", delayMs: 300)) }
        #expect(await eventually { log.started("Echo") == 1 })
        let shutdown = Task { await server.shutdownGracefully(timeout: .seconds(10)) }
        let response = try await inFlight.value
        #expect(response.text == "slow")
        await shutdown.value
        #expect(server.connectionCount == 0)
        await expectRPCError(.unavailable) { try await probe.echo(Request(text: "late")) }
        await client.close()
    }

    @Test(
        "malformed gRPC messages end the call with a status and leave the connection up",
        arguments: [
            ([0, 0, 0, 0, 3, 1], RPCError.Code.internal),  // length 3, 1 byte, then END_STREAM: truncated
            ([1, 0, 0, 0, 1, 0x08], RPCError.Code.internal),  // compressed flag without grpc-encoding
            ([2, 0, 0, 0, 1, 0x08], RPCError.Code.internal),  // a flag that does not exist
            ([0, 0xFF, 0xFF, 0xFF, 0xFF], RPCError.Code.resourceExhausted),  // 4 GiB declared
            ([0, 0, 0, 0, 2, 0x0A, 0x05], RPCError.Code.internal),  // a string field running past the end
            ([0, 0, 0], RPCError.Code.internal),  // a prefix cut short
        ] as [([UInt8], RPCError.Code)])
    func malformedMessages(bytes: [UInt8], code: RPCError.Code) async throws {
        try await withServer([ProbeService()]) { server, client, _ in
            let call = try await client.rawCall(Rpctest_V1_Probe.Method.Echo.descriptor, bytes: bytes)
            await expectRPCError(code) { while try await call.responses.next() != nil {} }
            let response = try await Rpctest_V1_Probe.Client(client).echo(Request(text: "after"))
            #expect(response.text == "after")
            #expect(server.connectionCount == 1)
        }
    }

    @Test("garbage and broken HTTP/2 close that connection only; the server keeps serving")
    func malformedHTTP2() async throws {
        try await withServer([ProbeService()]) { server, client, port in
            let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
            let settings: [UInt8] = [0, 0, 0, 4, 0, 0, 0, 0, 0]
            // Input the server must reject by closing the connection.
            let rejected: [[UInt8]] = [
                Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8),  // not HTTP/2
                (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7919) },  // noise
                preface + settings + [0, 0, 4, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0],  // DATA on an idle stream
                preface + settings + [0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0],  // a frame larger than allowed
                preface + settings + [0, 0, 1, 1, 5, 0, 0, 0, 1, 0xFF],  // HEADERS with an undecodable block
            ]
            for (index, input) in rejected.enumerated() {
                let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connect(host: "127.0.0.1", port: port).get()
                var buffer = channel.allocator.buffer(capacity: input.count)
                buffer.writeBytes(input)
                try? await channel.writeAndFlush(buffer)
                // The server must close the connection by itself.
                let closed = await eventually { !channel.isActive }
                #expect(closed, "input \(index) did not close the connection")
                try? await channel.close()
            }
            _ = try await Rpctest_V1_Probe.Client(client).echo(Request(text: "connect"))
            // A frame cut short just waits for the rest; a client that then goes away leaves nothing behind.
            let truncated = preface + settings + [0, 0, 8, 1, 5, 0, 0, 0, 1, 0x82]
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: port).get()
            var buffer = channel.allocator.buffer(capacity: truncated.count)
            buffer.writeBytes(truncated)
            try await channel.writeAndFlush(buffer)
            #expect(await eventually { server.connectionCount == 2 })
            try await channel.close()
            #expect(await eventually { server.connectionCount <= 1 })
            let response = try await Rpctest_V1_Probe.Client(client).echo(Request(text: "still serving"))
            #expect(response.text == "still serving")
            #expect(await eventually { server.connectionCount == 1 })
        }
    }
}

/// Collects what a raw peer receives, and wakes whoever waits for a byte sequence to arrive.
final class ReceivedBytes: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    private struct State {
        var bytes: [UInt8] = []
        var waiters: [(sequence: [UInt8], continuation: CheckedContinuation<Void, Never>)] = []
    }
    private let state = NIOLockedValueBox(State())

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let ready = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
            state.bytes += buffer.readableBytesView
            let bytes = state.bytes
            let ready = state.waiters.filter { Self.contains(bytes, $0.sequence) }.map(\.continuation)
            state.waiters.removeAll { Self.contains(bytes, $0.sequence) }
            return ready
        }
        for waiter in ready { waiter.resume() }
    }

    /// Returns once `sequence` has arrived (at once if it already has).
    func wait(for sequence: [UInt8]) async {
        await withCheckedContinuation { continuation in
            let arrived = state.withLockedValue { state in
                if Self.contains(state.bytes, sequence) { return true }
                state.waiters.append((sequence, continuation))
                return false
            }
            if arrived { continuation.resume() }
        }
    }

    private static func contains(_ bytes: [UInt8], _ sequence: [UInt8]) -> Bool {
        guard bytes.count >= sequence.count else { return false }
        return (0...(bytes.count - sequence.count)).contains { Array(bytes[$0..<($0 + sequence.count)]) == sequence }
    }
}

@Suite("keepalive and idle connections, on a manual clock")
struct KeepaliveTests {
    @Test("a quiet connection is pinged and the client's ACKs keep it open")
    func keepalive() async throws {
        let clock = ManualTimerClock()
        try await withServer(
            [ProbeService()],
            configure: {
                $0.keepaliveInterval = .milliseconds(100)
                $0.keepaliveTimeout = .seconds(30)
                $0.timerClock = .manual(clock)
            }
        ) { server, client, _ in
            _ = try await Rpctest_V1_Probe.Client(client).echo(Request())
            for _ in 1...10 {
                // An interval of quiet: the tick sends a PING (unless a late frame of the client's, such as a
                // WINDOW_UPDATE, counted as activity). Every PING sent is acknowledged before time moves on; the ACK
                // crosses a real socket, so its arrival is polled for (bounded), with the server's clock standing still.
                await clock.advance(by: .milliseconds(100))
                #expect(await eventually { server.pingAcksReceived == server.pingsSent })
            }
            #expect(server.pingAcksReceived >= 5)
            #expect(server.connectionCount == 1)
            let reply = try await Rpctest_V1_Probe.Client(client).echo(Request(text: "alive"))
            #expect(reply.text == "alive")
        }
    }

    @Test(
        "a peer that never acknowledges PING is closed after the keepalive timeout, not before", .timeLimit(.minutes(1))
    )
    func keepaliveTimeout() async throws {
        let clock = ManualTimerClock()
        try await withServer(
            [ProbeService()],
            configure: {
                $0.keepaliveInterval = .seconds(1)
                $0.keepaliveTimeout = .seconds(1)
                $0.idleTimeout = nil
                $0.timerClock = .manual(clock)
            }
        ) { server, _, port in
            // A raw peer that says hello (preface, SETTINGS) and then never answers anything.
            let received = ReceivedBytes()
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(received) }
                }
                .connect(host: "127.0.0.1", port: port).get()
            let hello = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0]
            try await channel.writeAndFlush(channel.allocator.buffer(bytes: hello))
            // The server ACKs our SETTINGS once it has read them: from then on nothing arrives from us, so the
            // connection's last activity is fixed before the clock moves.
            let settingsAck: [UInt8] = [0, 0, 0, 4, 1, 0, 0, 0, 0]
            await received.wait(for: settingsAck)
            await clock.advance(by: .seconds(1))  // quiet for an interval: PING
            await clock.advance(by: .seconds(1))  // unanswered for the timeout: overdue once
            #expect(channel.isActive, "closed on the first overdue tick")
            await clock.advance(by: .seconds(1))  // overdue twice: closed
            try await channel.closeFuture.get()  // the server closed it (the test's time limit bounds a hang)
            #expect(await eventually { server.connectionCount == 0 })
            try? await channel.close()
        }
    }

    @Test("an idle connection is closed with GOAWAY; the client reconnects for its next call")
    func idleTimeout() async throws {
        let clock = ManualTimerClock()
        try await withServer(
            [ProbeService()],
            configure: {
                $0.idleTimeout = .milliseconds(300)
                $0.keepaliveInterval = nil
                $0.timerClock = .manual(clock)
            }
        ) { server, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            _ = try await probe.echo(Request())
            // The idle timer is armed again when the call's stream closes on the server.
            await clock.waitForTimers(count: 1)
            await clock.advance(by: .milliseconds(299))
            #expect(server.connectionCount == 1, "closed before the idle timeout")
            await clock.advance(by: .milliseconds(1))
            #expect(await eventually { server.connectionCount == 0 })
            let reply = try await probe.echo(Request(text: "again"))
            #expect(reply.text == "again")
        }
    }

    @Test("a connection with a call in flight is not idle")
    func busyIsNotIdle() async throws {
        let clock = ManualTimerClock()
        let log = EventLog()
        try await withServer(
            [ProbeService(observer: log.observer)],
            configure: {
                $0.idleTimeout = .milliseconds(400)
                $0.keepaliveInterval = nil
                $0.timerClock = .manual(clock)
            }
        ) { server, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            // A client-streaming call the test holds open until it says: the stream stays in flight however slow
            // the machine is.
            let (held, release) = AsyncStream.makeStream(of: Void.self)
            let call = Task {
                try await probe.collect { writer in
                    try await writer.write(Request(number: 7))
                    for await _ in held { break }
                }
            }
            #expect(await eventually { log.started("Collect") == 1 })
            await clock.advance(by: .seconds(10))  // far past the idle timeout, with the call in flight
            #expect(server.connectionCount == 1)
            release.yield()
            let response = try await call.value
            #expect(response.number == 7)
            #expect(server.connectionCount == 1)
        }
    }
}

@Suite("stream limits")
struct StreamLimitTests {
    /// Counts handlers running at once.
    final class InFlight: Sendable {
        private let state = NIOLockedValueBox((now: 0, peak: 0))
        var peak: Int { state.withLockedValue { $0.peak } }

        var observer: @Sendable (ProbeService.Event) -> Void {
            { [state] event in
                state.withLockedValue { state in
                    switch event {
                    case .started:
                        state.now += 1
                        state.peak = max(state.peak, state.now)
                    case .finished, .cancelled: state.now -= 1
                    }
                }
            }
        }
    }

    @Test("the server's SETTINGS_MAX_CONCURRENT_STREAMS holds: calls beyond it wait, and all complete")
    func maxConcurrentStreams() async throws {
        let inFlight = InFlight()
        try await withServer(
            [ProbeService(observer: inFlight.observer)], configure: { $0.http2.maxConcurrentStreams = 8 }
        ) { _, client, _ in
            let probe = Rpctest_V1_Probe.Client(client)
            let count = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<64 {
                    group.addTask {
                        _ = try await probe.echo(Request(delayMs: 20))
                        return 1
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(count == 64)
            #expect(inFlight.peak <= 8, "\(inFlight.peak) handlers ran at once")
            #expect(inFlight.peak >= 2)
        }
    }
}
