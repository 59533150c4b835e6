import ConformanceMessages
import ProtoRuntime
import TestSupport
import Testing

/// Every kind of bad input, with the error it must give: a typed error naming the field, never a crash.
@Suite("Malformed input")
struct MalformedInputTests {
    typealias AllTypes = Conformance_V1_AllTypes

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var bytes: [UInt8]
        var code: ProtoDecodingError.Code
        var path: [String]
        var testDescription: String { name }
    }

    static let overlong = [UInt8](repeating: 0xFF, count: 10)

    static let cases: [Case] = [
        Case(name: "truncated varint", bytes: [0x18, 0x80], code: .truncated, path: ["f_int64"]),
        Case(name: "eleven-byte varint", bytes: [0x18] + overlong + [0x01], code: .malformedVarint, path: ["f_int64"]),
        Case(
            name: "varint overflowing 64 bits", bytes: [0x18] + [UInt8](repeating: 0xFF, count: 9) + [0x02],
            code: .malformedVarint, path: ["f_int64"]),
        Case(name: "truncated tag", bytes: [0x28, 0x01, 0x80], code: .truncated, path: []),
        Case(name: "wire type 6", bytes: [0x0E, 0x00], code: .invalidWireType, path: ["f_double"]),
        Case(name: "wire type 7", bytes: [0x0F, 0x00], code: .invalidWireType, path: ["f_double"]),
        Case(name: "field number 0", bytes: [0x00, 0x00], code: .invalidFieldNumber, path: []),
        Case(name: "field number 0, length-delimited", bytes: [0x02, 0x00], code: .invalidFieldNumber, path: []),
        Case(
            name: "tag above 32 bits", bytes: [0x80, 0x80, 0x80, 0x80, 0x10, 0x00], code: .invalidFieldNumber, path: []),
        Case(
            name: "string length past the end", bytes: [0x4A, 0x05, 0x61, 0x62], code: .lengthOutOfBounds,
            path: ["f_string"]),
        Case(
            name: "length of 2^60", bytes: [0x52, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10],
            code: .lengthOutOfBounds, path: ["f_bytes"]),
        Case(
            name: "invalid UTF-8 in a string", bytes: [0x4A, 0x02, 0xC3, 0x28], code: .invalidUTF8, path: ["f_string"]),
        Case(
            name: "invalid UTF-8 in a repeated string", bytes: [0xEA, 0x01, 0x01, 0xFF], code: .invalidUTF8,
            path: ["r_string"]),
        Case(
            name: "invalid UTF-8 in a nested message", bytes: [0x8A, 0x01, 0x03, 0x12, 0x01, 0x80], code: .invalidUTF8,
            path: ["f_message", "b"]),
        Case(
            name: "invalid UTF-8 in the second element of a repeated message",
            bytes: [0xAA, 0x02, 0x00, 0xAA, 0x02, 0x03, 0x12, 0x01, 0xC0], code: .invalidUTF8,
            path: ["r_message[1]", "b"]
        ),
        Case(
            name: "invalid UTF-8 in a map key", bytes: [0xC2, 0x04, 0x03, 0x0A, 0x01, 0xFE], code: .invalidUTF8,
            path: ["m_string"]),
        Case(
            name: "map entry length past the end", bytes: [0xC2, 0x04, 0x09, 0x0A], code: .lengthOutOfBounds,
            path: ["m_string"]),
        Case(name: "truncated fixed32", bytes: [0x3D, 0x01, 0x02], code: .truncated, path: ["f_fixed32"]),
        Case(name: "truncated fixed64", bytes: [0x31, 0x01], code: .truncated, path: ["f_fixed64"]),
        Case(
            name: "packed fixed32 run cut mid-element", bytes: [0xDA, 0x01, 0x03, 0x01, 0x02, 0x03], code: .truncated,
            path: ["r_fixed32"]),
        Case(
            name: "packed varint run cut mid-element", bytes: [0xCA, 0x01, 0x01, 0x80], code: .truncated,
            path: ["r_int32"]),
        Case(
            name: "nested message longer than its parent", bytes: [0x8A, 0x01, 0x02, 0x12, 0x05, 0x61],
            code: .lengthOutOfBounds, path: ["f_message", "b"]),
        Case(name: "end-group without start", bytes: [0x0C], code: .unmatchedEndGroup, path: ["f_double"]),
        Case(name: "group that never ends", bytes: [0xC3, 0x0C, 0x08, 0x01], code: .truncated, path: []),
        Case(
            name: "group ended by another field's end-group", bytes: [0xC3, 0x0C, 0xCC, 0x0C], code: .unmatchedEndGroup,
            path: []),
        Case(name: "unknown field with a bad length", bytes: [0xE2, 0x12, 0x7F], code: .lengthOutOfBounds, path: []),
        Case(
            name: "oneof message member truncated", bytes: [0x9A, 0x05, 0x04, 0x08], code: .lengthOutOfBounds,
            path: ["c_message"]),
    ]

    @Test("bad input gives the expected error", arguments: cases)
    func malformed(_ input: Case) {
        assertDecodeFails(AllTypes.self, input.bytes, input.code, path: input.path)
    }

    @Test("errors carry the byte offset and a readable description")
    func description() {
        do {
            _ = try AllTypes(serializedBytes: [0x28, 0x01, 0x8A, 0x01, 0x03, 0x12, 0x01, 0x80])
            Issue.record("decoded malformed input")
        } catch {
            #expect(error.offset == 7)
            #expect(
                error.description
                    == "protobuf decoding failed: invalid UTF-8 in a string field in field f_message.b at byte 7")
        }
    }

    @Test("input above the size limit is refused before it is read")
    func sizeLimit() {
        assertDecodeFails(
            AllTypes.self, [UInt8](repeating: 0, count: 11), .sizeLimitExceeded, options: DecodingOptions(maxSize: 10))
    }

    @Test("every truncation of a valid message fails cleanly or decodes a prefix")
    func everyTruncation() throws {
        var message = AllTypes(fInt64: -5, fString: "héllo", fMessage: Conformance_V1_Inner(a: 1, b: "x", c: [1, 2]))
        message.mString = ["k": "v"]
        message.rSint64 = [1, -1]
        message.choice = .cMessage(Conformance_V1_Inner(a: 2))
        let bytes = message.serializedBytes()
        for length in 0..<bytes.count {
            // Truncation at a field boundary is a valid shorter message; elsewhere it is an error. Either way, no crash.
            _ = try? AllTypes(serializedBytes: Array(bytes[0..<length]))
        }
        #expect(try AllTypes(serializedBytes: bytes) == message)
    }

    @Test("random garbage never crashes the decoder")
    func garbage() {
        var random = SeededRandom(seed: 7)
        var failures = 0
        for _ in 0..<20_000 {
            let bytes = (0..<(random.next() % 64)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            do {
                let message = try AllTypes(serializedBytes: bytes)
                // Whatever decodes must re-encode to something that decodes to the same message.
                #expect(try AllTypes(serializedBytes: message.serializedBytes()) == message)
            } catch {
                failures += 1
            }
        }
        #expect(failures > 0)
    }
}
