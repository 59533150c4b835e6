/// How one protobuf field type is read, sized and written; the generic building block of generated code.
///
/// There is one codec per proto scalar type (``WireInt32``, ``WireSInt64``, ``WireString``, …) plus ``WireEnum``
/// and ``WireMessage``. Generated code names the codec of each field, and the shared logic for repeated, packed and
/// map fields lives here, once, instead of in every generated file.
public protocol ProtoFieldCodec {
    /// The Swift type of a value of this field type.
    associatedtype Value: Hashable & Sendable
    /// The wire type of one (unpacked) value.
    static var wireType: WireType { get }
    /// The proto3 default value.
    static var defaultValue: Value { get }
    /// Reads one value whose tag was just read.
    static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Value
    /// Reads one value and merges it into `value` (replaces it, except for messages).
    static func merge(from reader: inout WireReader, into value: inout Value) throws(ProtoDecodingError)
    /// The number of bytes `value` takes after its tag (its length prefix included, where it has one).
    static func encodedSize(of value: Value) -> Int
    /// Writes `value` without its tag.
    static func write(_ value: Value, to writer: inout WireWriter)
}

extension ProtoFieldCodec {
    @inlinable @inline(__always)
    public static func merge(from reader: inout WireReader, into value: inout Value) throws(ProtoDecodingError) {
        value = try read(from: &reader)
    }
}

/// A scalar codec whose repeated fields are packed: numbers, bools and enums.
public protocol ProtoPackableCodec: ProtoFieldCodec {
    /// An upper bound on the number of values in a packed run, used to reserve capacity without trusting input.
    static func elementCountUpperBound(in bytes: UnsafeRawBufferPointer) -> Int
}

/// A codec whose values are varints.
public protocol ProtoVarintCodec: ProtoPackableCodec {}

extension ProtoVarintCodec {
    @inlinable
    public static var wireType: WireType { .varint }

    @inlinable
    public static func elementCountUpperBound(in bytes: UnsafeRawBufferPointer) -> Int {
        // Each varint ends with exactly one byte below 0x80.
        var count = 0
        for byte in bytes where byte < 0x80 { count &+= 1 }
        return count
    }
}

/// A codec whose values take four bytes.
public protocol ProtoFixed32Codec: ProtoPackableCodec {}

extension ProtoFixed32Codec {
    @inlinable
    public static var wireType: WireType { .fixed32 }
    @inlinable
    public static func elementCountUpperBound(in bytes: UnsafeRawBufferPointer) -> Int { bytes.count / 4 }
}

/// A codec whose values take eight bytes.
public protocol ProtoFixed64Codec: ProtoPackableCodec {}

extension ProtoFixed64Codec {
    @inlinable
    public static var wireType: WireType { .fixed64 }
    @inlinable
    public static func elementCountUpperBound(in bytes: UnsafeRawBufferPointer) -> Int { bytes.count / 8 }
}

/// `int32`: a varint, negative values sign-extended to ten bytes.
public enum WireInt32: ProtoVarintCodec {
    public typealias Value = Int32
    @inlinable public static var defaultValue: Int32 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Int32 {
        Int32(truncatingIfNeeded: try reader.readVarint())
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: Int32) -> Int {
        WireFormat.varintSize(UInt64(bitPattern: Int64(value)))
    }
    @inlinable @inline(__always)
    public static func write(_ value: Int32, to writer: inout WireWriter) {
        writer.writeVarint(UInt64(bitPattern: Int64(value)))
    }
}

/// `int64`: a varint of the two's complement bits.
public enum WireInt64: ProtoVarintCodec {
    public typealias Value = Int64
    @inlinable public static var defaultValue: Int64 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Int64 {
        Int64(bitPattern: try reader.readVarint())
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: Int64) -> Int { WireFormat.varintSize(UInt64(bitPattern: value)) }
    @inlinable @inline(__always)
    public static func write(_ value: Int64, to writer: inout WireWriter) {
        writer.writeVarint(UInt64(bitPattern: value))
    }
}

/// `uint32`: a varint; wider values on the wire are truncated, as in every reference implementation.
public enum WireUInt32: ProtoVarintCodec {
    public typealias Value = UInt32
    @inlinable public static var defaultValue: UInt32 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> UInt32 {
        UInt32(truncatingIfNeeded: try reader.readVarint())
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: UInt32) -> Int { WireFormat.varintSize(value) }
    @inlinable @inline(__always)
    public static func write(_ value: UInt32, to writer: inout WireWriter) { writer.writeVarint(value) }
}

/// `uint64`: a varint.
public enum WireUInt64: ProtoVarintCodec {
    public typealias Value = UInt64
    @inlinable public static var defaultValue: UInt64 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> UInt64 {
        try reader.readVarint()
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: UInt64) -> Int { WireFormat.varintSize(value) }
    @inlinable @inline(__always)
    public static func write(_ value: UInt64, to writer: inout WireWriter) { writer.writeVarint(value) }
}

/// `sint32`: a ZigZag-encoded varint.
public enum WireSInt32: ProtoVarintCodec {
    public typealias Value = Int32
    @inlinable public static var defaultValue: Int32 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Int32 {
        WireFormat.unZigZag(UInt32(truncatingIfNeeded: try reader.readVarint()))
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: Int32) -> Int { WireFormat.varintSize(WireFormat.zigZag(value)) }
    @inlinable @inline(__always)
    public static func write(_ value: Int32, to writer: inout WireWriter) {
        writer.writeVarint(WireFormat.zigZag(value))
    }
}

/// `sint64`: a ZigZag-encoded varint.
public enum WireSInt64: ProtoVarintCodec {
    public typealias Value = Int64
    @inlinable public static var defaultValue: Int64 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Int64 {
        WireFormat.unZigZag(try reader.readVarint())
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: Int64) -> Int { WireFormat.varintSize(WireFormat.zigZag(value)) }
    @inlinable @inline(__always)
    public static func write(_ value: Int64, to writer: inout WireWriter) {
        writer.writeVarint(WireFormat.zigZag(value))
    }
}

/// `bool`: a varint; any non-zero value is `true`.
public enum WireBool: ProtoVarintCodec {
    public typealias Value = Bool
    @inlinable public static var defaultValue: Bool { false }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Bool {
        try reader.readVarint() != 0
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: Bool) -> Int { 1 }
    @inlinable @inline(__always)
    public static func write(_ value: Bool, to writer: inout WireWriter) { writer.writeByte(value ? 1 : 0) }
}

/// `fixed32`: four little-endian bytes.
public enum WireFixed32: ProtoFixed32Codec {
    public typealias Value = UInt32
    @inlinable public static var defaultValue: UInt32 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> UInt32 {
        try reader.readFixed32()
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: UInt32) -> Int { 4 }
    @inlinable @inline(__always)
    public static func write(_ value: UInt32, to writer: inout WireWriter) { writer.writeFixed32(value) }
}

/// `sfixed32`: four little-endian bytes, two's complement.
public enum WireSFixed32: ProtoFixed32Codec {
    public typealias Value = Int32
    @inlinable public static var defaultValue: Int32 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Int32 {
        Int32(bitPattern: try reader.readFixed32())
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: Int32) -> Int { 4 }
    @inlinable @inline(__always)
    public static func write(_ value: Int32, to writer: inout WireWriter) {
        writer.writeFixed32(UInt32(bitPattern: value))
    }
}

/// `float`: an IEEE 754 single in four little-endian bytes.
public enum WireFloat: ProtoFixed32Codec {
    public typealias Value = Float
    @inlinable public static var defaultValue: Float { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Float {
        Float(bitPattern: try reader.readFixed32())
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: Float) -> Int { 4 }
    @inlinable @inline(__always)
    public static func write(_ value: Float, to writer: inout WireWriter) { writer.writeFixed32(value.bitPattern) }
}

/// `fixed64`: eight little-endian bytes.
public enum WireFixed64: ProtoFixed64Codec {
    public typealias Value = UInt64
    @inlinable public static var defaultValue: UInt64 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> UInt64 {
        try reader.readFixed64()
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: UInt64) -> Int { 8 }
    @inlinable @inline(__always)
    public static func write(_ value: UInt64, to writer: inout WireWriter) { writer.writeFixed64(value) }
}

/// `sfixed64`: eight little-endian bytes, two's complement.
public enum WireSFixed64: ProtoFixed64Codec {
    public typealias Value = Int64
    @inlinable public static var defaultValue: Int64 { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Int64 {
        Int64(bitPattern: try reader.readFixed64())
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: Int64) -> Int { 8 }
    @inlinable @inline(__always)
    public static func write(_ value: Int64, to writer: inout WireWriter) {
        writer.writeFixed64(UInt64(bitPattern: value))
    }
}

/// `double`: an IEEE 754 double in eight little-endian bytes.
public enum WireDouble: ProtoFixed64Codec {
    public typealias Value = Double
    @inlinable public static var defaultValue: Double { 0 }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> Double {
        Double(bitPattern: try reader.readFixed64())
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: Double) -> Int { 8 }
    @inlinable @inline(__always)
    public static func write(_ value: Double, to writer: inout WireWriter) { writer.writeFixed64(value.bitPattern) }
}

/// `string`: length-prefixed UTF-8, validated on decode.
public enum WireString: ProtoFieldCodec {
    public typealias Value = String
    @inlinable public static var wireType: WireType { .lengthDelimited }
    @inlinable public static var defaultValue: String { "" }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> String {
        try reader.readString()
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: String) -> Int { WireFormat.lengthDelimitedSize(value.utf8.count) }
    @inlinable @inline(__always)
    public static func write(_ value: String, to writer: inout WireWriter) { writer.writeString(value) }
}

/// `bytes`: length-prefixed raw bytes.
public enum WireBytes: ProtoFieldCodec {
    public typealias Value = [UInt8]
    @inlinable public static var wireType: WireType { .lengthDelimited }
    @inlinable public static var defaultValue: [UInt8] { [] }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> [UInt8] {
        try reader.readBytes()
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: [UInt8]) -> Int { WireFormat.lengthDelimitedSize(value.count) }
    @inlinable @inline(__always)
    public static func write(_ value: [UInt8], to writer: inout WireWriter) { writer.writeBytes(value) }
}

/// A proto3 (open) enum: an `int32` varint; values the enum does not name are kept as `unrecognized`.
public enum WireEnum<E: ProtoEnum>: ProtoVarintCodec {
    public typealias Value = E
    @inlinable public static var defaultValue: E { E(rawValue: 0) }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> E {
        E(rawValue: Int32(truncatingIfNeeded: try reader.readVarint()))
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: E) -> Int {
        WireFormat.varintSize(UInt64(bitPattern: Int64(value.rawValue)))
    }
    @inlinable @inline(__always)
    public static func write(_ value: E, to writer: inout WireWriter) {
        writer.writeVarint(UInt64(bitPattern: Int64(value.rawValue)))
    }
}

/// An embedded message: length-prefixed; a repeated occurrence merges into the value.
public enum WireMessage<M: ProtoMessage>: ProtoFieldCodec {
    public typealias Value = M
    @inlinable public static var wireType: WireType { .lengthDelimited }
    @inlinable public static var defaultValue: M { M() }
    @inlinable @inline(__always)
    public static func read(from reader: inout WireReader) throws(ProtoDecodingError) -> M {
        var message = M()
        try reader.readMessage(into: &message)
        return message
    }
    @inlinable @inline(__always)
    public static func merge(from reader: inout WireReader, into value: inout M) throws(ProtoDecodingError) {
        try reader.readMessage(into: &value)
    }
    @inlinable @inline(__always)
    public static func encodedSize(of value: M) -> Int { WireFormat.lengthDelimitedSize(value.encodedSize()) }
    @inlinable @inline(__always)
    public static func write(_ value: M, to writer: inout WireWriter) { writer.writeMessage(value) }
}
