import Testing

@testable import RPCCore

@Suite("gRPC message framing")
struct GRPCMessageFramingTests {
    typealias Message = GRPCMessageDeframer.Message

    static func framed(_ messages: [[UInt8]], compressed: Bool = false) -> [UInt8] {
        var output: [UInt8] = []
        for message in messages { GRPCMessageFramer.append(message, compressed: compressed, to: &output) }
        return output
    }

    /// Feeds `chunks` one at a time and collects every message that becomes complete.
    static func deframe(
        _ chunks: [[UInt8]], maxMessageSize: Int = 1 << 22, acceptsCompressed: Bool = false
    ) throws(RPCError) -> [Message] {
        var deframer = GRPCMessageDeframer(maxMessageSize: maxMessageSize, acceptsCompressed: acceptsCompressed)
        var messages: [Message] = []
        for chunk in chunks {
            deframer.append(chunk)
            while let message = try deframer.next() { messages.append(message) }
        }
        try deframer.finish()
        return messages
    }

    static let sample: [[UInt8]] = [[], [0x01], Array(0..<200).map(UInt8.init), [0xFF, 0x00, 0x7F]]

    @Test("the prefix is a flag byte and a big-endian length")
    func prefix() {
        #expect(Self.framed([[0xAA, 0xBB]]) == [0x00, 0x00, 0x00, 0x00, 0x02, 0xAA, 0xBB])
        #expect(Self.framed([[0xAA]], compressed: true) == [0x01, 0x00, 0x00, 0x00, 0x01, 0xAA])
        #expect(Array(Self.framed([Array(repeating: 0, count: 0x010203)]).prefix(5)) == [0x00, 0x00, 0x01, 0x02, 0x03])
    }

    @Test("messages come back the same whatever the split of the bytes")
    func everySplit() throws {
        let bytes = Self.framed(Self.sample)
        let expected = Self.sample.map { Message(bytes: $0, isCompressed: false) }
        #expect(try Self.deframe([bytes]) == expected)
        #expect(try Self.deframe(bytes.map { [$0] }) == expected)  // one byte at a time
        for cut in 0...bytes.count {
            #expect(try Self.deframe([Array(bytes[..<cut]), Array(bytes[cut...])]) == expected, "split at \(cut)")
        }
        for first in stride(from: 0, to: bytes.count, by: 7) {
            for second in stride(from: first, to: bytes.count, by: 11) {
                let chunks = [Array(bytes[..<first]), Array(bytes[first..<second]), Array(bytes[second...])]
                #expect(try Self.deframe(chunks) == expected, "splits at \(first), \(second)")
            }
        }
    }

    @Test("a large message arriving in many frames is reassembled, and the buffer is reclaimed")
    func largeMessage() throws {
        let big = (0..<1_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let bytes = Self.framed([big, [1, 2, 3]])
        var deframer = GRPCMessageDeframer(maxMessageSize: 1 << 20)
        var messages: [Message] = []
        var offset = 0
        while offset < bytes.count {
            let end = min(offset + 16_384, bytes.count)
            deframer.append(Array(bytes[offset..<end]))
            while let message = try deframer.next() { messages.append(message) }
            offset = end
        }
        #expect(messages.map(\.bytes) == [big, [1, 2, 3]])
        #expect(deframer.bufferedByteCount == 0)
    }

    @Test("a declared length over the limit is RESOURCE_EXHAUSTED, before the bytes arrive")
    func oversize() throws {
        #expect(try Self.deframe([Self.framed([[UInt8](repeating: 7, count: 100)])], maxMessageSize: 100).count == 1)
        #expect(
            throws: RPCError(
                code: .resourceExhausted, message: "message of 101 bytes is larger than the limit of 100 bytes")
        ) {
            // Only the prefix is sent: the limit is enforced on the declared length.
            _ = try Self.deframe([[0x00, 0x00, 0x00, 0x00, 101]], maxMessageSize: 100)
        }
        #expect(throws: RPCError.self) {
            _ = try Self.deframe([[0x00, 0xFF, 0xFF, 0xFF, 0xFF]])
        }
    }

    @Test("compressed messages need a negotiated encoding; other flag values are malformed")
    func compressedFlag() throws {
        let compressed = Self.framed([[9, 9]], compressed: true)
        #expect(
            try Self.deframe([compressed], acceptsCompressed: true) == [Message(bytes: [9, 9], isCompressed: true)])
        #expect(throws: RPCError(code: .internal, message: "compressed message on a stream without grpc-encoding")) {
            _ = try Self.deframe([compressed])
        }
        #expect(throws: RPCError(code: .internal, message: "invalid compressed flag 2 in message prefix")) {
            _ = try Self.deframe([[0x02, 0, 0, 0, 0]])
        }
    }

    @Test("a stream that ends inside a prefix or a message is an error; between messages it is not")
    func truncation() throws {
        let bytes = Self.framed([[1, 2, 3, 4]])
        for cut in 1..<bytes.count {
            #expect(throws: RPCError.self, "cut at \(cut)") {
                _ = try Self.deframe([Array(bytes[..<cut])])
            }
        }
        #expect(try Self.deframe([]) == [])
    }

    @Test("after an error the deframer stays failed and holds nothing")
    func sticky() {
        var deframer = GRPCMessageDeframer(maxMessageSize: 4)
        deframer.append([0x00, 0, 0, 0, 5, 1, 2, 3, 4, 5])
        #expect(throws: RPCError.self) { _ = try deframer.next() }
        deframer.append(Self.framed([[1]]))
        #expect(throws: RPCError.self) { _ = try deframer.next() }
        #expect(deframer.bufferedByteCount == 0)
    }

    @Test("random garbage never traps the deframer")
    func garbage() {
        var state: UInt64 = 42
        for _ in 0..<2_000 {
            var deframer = GRPCMessageDeframer(maxMessageSize: 64, acceptsCompressed: state & 1 == 0)
            for _ in 0..<4 {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                let chunk = (0..<(Int(state >> 58))).map { i in UInt8(truncatingIfNeeded: state >> UInt64(i % 56)) }
                deframer.append(chunk)
                do {
                    while let message = try deframer.next() { #expect(message.bytes.count <= 64) }
                } catch {
                    #expect(error.code == .internal || error.code == .resourceExhausted)
                    break
                }
            }
        }
    }
}

@Suite("RPC errors")
struct RPCErrorTests {
    @Test("status codes carry gRPC's numbers")
    func codes() {
        #expect(RPCError.Code.cancelled.rawValue == 1)
        #expect(RPCError.Code.resourceExhausted.rawValue == 8)
        #expect(RPCError.Code.unimplemented.rawValue == 12)
        #expect(RPCError.Code.internal.rawValue == 13)
        #expect(RPCError.Code.unauthenticated.rawValue == 16)
        #expect(RPCError.Code(rawValue: 14) == .unavailable)
        #expect(RPCError.Code(rawValue: 0) == nil)  // OK is not an error
        #expect(RPCError.Code(rawValue: 17) == nil)
        #expect((1...16).compactMap { RPCError.Code(rawValue: $0) }.count == 16)
        #expect("\(RPCError(code: .notFound, message: "no droplet 7"))" == "not found: no droplet 7")
    }
}
