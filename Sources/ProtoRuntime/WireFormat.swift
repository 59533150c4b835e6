/// The wire types of the protobuf binary format.
///
/// Each field on the wire is preceded by a tag, `(fieldNumber << 3) | wireType`. Wire types 3 and 4 (groups) are
/// proto2-only but still appear in unknown fields from older peers, so the reader can skip them.
public enum WireType: UInt8, Sendable, Hashable {
    /// int32, int64, uint32, uint64, sint32, sint64, bool, enum.
    case varint = 0
    /// fixed64, sfixed64, double.
    case fixed64 = 1
    /// string, bytes, embedded messages, packed repeated fields.
    case lengthDelimited = 2
    /// Start of a proto2 group (deprecated).
    case startGroup = 3
    /// End of a proto2 group (deprecated).
    case endGroup = 4
    /// fixed32, sfixed32, float.
    case fixed32 = 5
}

/// Constants and size arithmetic of the wire format, shared by the reader, the writer and generated code.
public enum WireFormat {
    /// The largest legal field number, 2^29 - 1.
    public static let maxFieldNumber = 536_870_911
    /// Field numbers reserved for the protobuf implementation itself.
    public static let reservedFieldNumbers = 19_000...19_999
    /// The longest legal varint: ten bytes hold 64 bits.
    public static let maxVarintLength = 10

    /// The tag for a field number and wire type.
    @inlinable @inline(__always)
    public static func tag(fieldNumber: Int, wireType: WireType) -> UInt32 {
        UInt32(truncatingIfNeeded: fieldNumber) << 3 | UInt32(wireType.rawValue)
    }

    /// The number of bytes `value` takes as a varint (1...10).
    @inlinable @inline(__always)
    public static func varintSize(_ value: UInt64) -> Int {
        // Every 7 significant bits take a byte; `| 1` makes zero take one byte.
        let bits = 64 - (value | 1).leadingZeroBitCount
        return (bits &* 9 &+ 64) >> 6
    }

    /// The number of bytes `value` takes as a varint (1...5).
    @inlinable @inline(__always)
    public static func varintSize(_ value: UInt32) -> Int {
        let bits = 32 - (value | 1).leadingZeroBitCount
        return (bits &* 9 &+ 64) >> 6
    }

    /// The number of bytes a length prefix and `length` bytes of payload take.
    @inlinable @inline(__always)
    public static func lengthDelimitedSize(_ length: Int) -> Int {
        varintSize(UInt64(truncatingIfNeeded: length)) &+ length
    }

    /// ZigZag-encodes a signed 32-bit value (sint32) so that small magnitudes stay small.
    @inlinable @inline(__always)
    public static func zigZag(_ value: Int32) -> UInt32 {
        UInt32(bitPattern: (value << 1) ^ (value >> 31))
    }

    /// ZigZag-encodes a signed 64-bit value (sint64).
    @inlinable @inline(__always)
    public static func zigZag(_ value: Int64) -> UInt64 {
        UInt64(bitPattern: (value << 1) ^ (value >> 63))
    }

    /// Decodes a ZigZag-encoded sint32.
    @inlinable @inline(__always)
    public static func unZigZag(_ value: UInt32) -> Int32 {
        Int32(bitPattern: (value >> 1) ^ (0 &- (value & 1)))
    }

    /// Decodes a ZigZag-encoded sint64.
    @inlinable @inline(__always)
    public static func unZigZag(_ value: UInt64) -> Int64 {
        Int64(bitPattern: (value >> 1) ^ (0 &- (value & 1)))
    }
}
