import ConformanceMessages
import ProtoRuntime
import TestSupport
import Testing

/// Encodes `message`, checks the bytes and the size pass, and decodes them back to the same message.
func assertEncodes<M: ProtoMessage>(
    _ message: M, _ expected: [UInt8], sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let bytes = message.serializedBytes()
    #expect(bytes == expected, "encoding of \(M.protoMessageName)", sourceLocation: sourceLocation)
    #expect(message.encodedSize() == bytes.count, sourceLocation: sourceLocation)
    let decoded = try M(serializedBytes: bytes)
    #expect(decoded == message, sourceLocation: sourceLocation)
}

/// Decodes `bytes` and expects a failure with `code` in `path`.
func assertDecodeFails<M: ProtoMessage>(
    _: M.Type, _ bytes: [UInt8], _ code: ProtoDecodingError.Code, path: [String] = [],
    options: DecodingOptions = DecodingOptions(), sourceLocation: SourceLocation = #_sourceLocation
) {
    do {
        let message = try M(serializedBytes: bytes, options: options)
        Issue.record("decoded \(message) from malformed input", sourceLocation: sourceLocation)
    } catch {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        #expect(error.fieldPath == path, "\(error)", sourceLocation: sourceLocation)
    }
}

/// Random values for the codec tests, on the shared seeded generator.
extension SeededRandom {
    /// Integers biased to the edges: zero, small, negative, extremes, every varint length.
    mutating func bits() -> UInt64 {
        switch next() % 8 {
        case 0: 0
        case 1: next() % 128
        case 2: UInt64(bitPattern: -Int64(next() % 1000))
        case 3: .max
        case 4: UInt64(bitPattern: .min)
        case 5: 1 << (next() % 64)
        default: next()
        }
    }

    mutating func int32() -> Int32 { Int32(truncatingIfNeeded: bits()) }
    mutating func int64() -> Int64 { Int64(bitPattern: bits()) }
    mutating func uint32() -> UInt32 { UInt32(truncatingIfNeeded: bits()) }
    mutating func uint64() -> UInt64 { bits() }
    mutating func bool() -> Bool { next() & 1 == 1 }

    mutating func double() -> Double {
        switch next() % 6 {
        case 0: 0
        case 1: -0.0
        case 2: .infinity
        case 3: Double(Int64(bitPattern: next())) / 1024
        default:
            // Any bit pattern but NaN, which is never equal to itself.
            Double(bitPattern: next()).isNaN ? 1.5 : Double(bitPattern: next() & ~(0x7FF0 << 48))
        }
    }

    mutating func float() -> Float { Float(double()) }

    mutating func string() -> String {
        var scalars = String.UnicodeScalarView()
        for _ in 0..<(next() % 24) {
            let value: UInt32 =
                switch next() % 5 {
                case 0: 0x80 + UInt32(next() % (0x800 - 0x80))
                case 1: 0x800 + UInt32(next() % (0xD800 - 0x800))
                case 2: 0x10000 + UInt32(next() % (0x110000 - 0x10000))
                default: 1 + UInt32(next() % 0x7F)
                }
            if let scalar = Unicode.Scalar(value) { scalars.append(scalar) }
        }
        return String(scalars)
    }

    mutating func bytes() -> [UInt8] { (0..<(next() % 40)).map { _ in UInt8(truncatingIfNeeded: next()) } }

    mutating func color() -> Conformance_V1_Color {
        chance(80)
            ? Conformance_V1_Color.allCases[Int(next() % 4)]
            : Conformance_V1_Color(rawValue: Int32(next() % 1000) - 500)
    }

    mutating func array<T>(_ make: (inout SeededRandom) -> T) -> [T] {
        (0..<(next() % 6)).map { _ in make(&self) }
    }

    mutating func map<K: Hashable & Sendable, V: Hashable & Sendable>(
        _ key: (inout SeededRandom) -> K, _ value: (inout SeededRandom) -> V
    ) -> ProtoMap<K, V> {
        var result: ProtoMap<K, V> = [:]
        for _ in 0..<(next() % 5) { result[key(&self)] = value(&self) }
        return result
    }
}
