import ConformanceMessages
import ProtoRuntime
import Testing

@Suite("Wire format primitives")
struct WireFormatTests {
    @Test("varint sizes are right at every bit length")
    func varintSizes() {
        #expect(WireFormat.varintSize(UInt64(0)) == 1)
        for bits in 1...64 {
            let value: UInt64 = bits == 64 ? .max : (1 << UInt64(bits)) - 1
            #expect(WireFormat.varintSize(value) == (bits + 6) / 7, "\(bits) bits")
            if bits < 64 { #expect(WireFormat.varintSize(value + 1) == (bits + 7) / 7) }
        }
        for bits in 1...32 {
            let value: UInt32 = bits == 32 ? .max : (1 << UInt32(bits)) - 1
            #expect(WireFormat.varintSize(value) == (bits + 6) / 7)
        }
    }

    @Test("ZigZag maps small magnitudes to small numbers and round trips the extremes")
    func zigZag() {
        #expect(WireFormat.zigZag(Int32(0)) == 0)
        #expect(WireFormat.zigZag(Int32(-1)) == 1)
        #expect(WireFormat.zigZag(Int32(1)) == 2)
        #expect(WireFormat.zigZag(Int32(-2)) == 3)
        #expect(WireFormat.zigZag(Int32.max) == 0xFFFF_FFFE)
        #expect(WireFormat.zigZag(Int32.min) == 0xFFFF_FFFF)
        for value: Int64 in [0, 1, -1, 63, -64, .max, .min, 1 << 40, -(1 << 40)] {
            #expect(WireFormat.unZigZag(WireFormat.zigZag(value)) == value)
        }
        for value: Int32 in [0, 1, -1, .max, .min] {
            #expect(WireFormat.unZigZag(WireFormat.zigZag(value)) == value)
        }
    }

    @Test("UTF-8 validation accepts well-formed text and rejects each kind of ill-formed sequence")
    func utf8() throws {
        // Through a string field: the only way input reaches the validator.
        let good: [[UInt8]] = [
            Array("plain ascii that is longer than eight bytes".utf8), Array("é 日本 𝄞".utf8),
            [0xEF, 0xBF, 0xBD], [0xF4, 0x8F, 0xBF, 0xBF], [0xED, 0x9F, 0xBF],
        ]
        for bytes in good {
            let message = try Conformance_V1_Inner(serializedBytes: [0x12, UInt8(bytes.count)] + bytes)
            #expect(Array(message.b.utf8) == bytes)
        }
        let bad: [[UInt8]] = [
            [0x80], [0xC0, 0x80], [0xC1, 0xBF], [0xC3], [0xC3, 0x28], [0xE0, 0x80, 0x80], [0xED, 0xA0, 0x80],
            [0xF0, 0x80, 0x80, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xFF],
            Array("12345678".utf8) + [0xE2, 0x82],
        ]
        for bytes in bad {
            assertDecodeFails(Conformance_V1_Inner.self, [0x12, UInt8(bytes.count)] + bytes, .invalidUTF8, path: ["b"])
        }
    }

    @Test("the ASCII check sees a high byte at every position of strings of every length up to 40")
    func asciiCheckCoversEveryByte() throws {
        // The check reads whole words and overlapping tails: a byte it skipped would let a lone 0x80 through.
        for length in 1...40 {
            let ascii = (0..<length).map { UInt8(0x61 + $0 % 26) }
            let message = try Conformance_V1_Inner(serializedBytes: [0x12, UInt8(length)] + ascii)
            #expect(Array(message.b.utf8) == ascii)
            for position in 0..<length {
                var bytes = ascii
                bytes[position] = 0x80  // a continuation byte with no lead: never valid
                assertDecodeFails(Conformance_V1_Inner.self, [0x12, UInt8(length)] + bytes, .invalidUTF8, path: ["b"])
            }
        }
    }
}
