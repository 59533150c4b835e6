/// Writes protobuf wire data backwards into a buffer that was sized beforehand.
///
/// Encoding is two passes: ``ProtoMessage/encodedSize()`` computes the exact size, one buffer of that size is
/// allocated, then generated code writes the message from its last byte to its first. Writing backwards means the
/// length of an embedded message is known the moment its payload is written, so no size is ever computed twice,
/// however deep the nesting (upb writes this way too). Fields are therefore written in descending field-number
/// order, each value before its tag. The writer does no bounds checks: the size pass is its contract, and
/// ``ProtoMessage/serializedBytes()`` verifies that the two agree.
public struct WireWriter {
    @usableFromInline var position: UnsafeMutableRawPointer

    /// A writer whose first write ends at `end` (one past the last byte of the buffer).
    @inlinable
    public init(end: UnsafeMutableRawPointer) {
        self.position = end
    }

    /// The first byte written so far.
    @inlinable
    public var currentPosition: UnsafeMutableRawPointer { position }

    /// Writes one byte (a one-byte tag, typically).
    @inlinable @inline(__always)
    public mutating func writeByte(_ byte: UInt8) {
        position -= 1
        position.storeBytes(of: byte, as: UInt8.self)
    }

    /// Writes two bytes in order (a two-byte tag, typically).
    @inlinable @inline(__always)
    public mutating func writeBytes(_ first: UInt8, _ second: UInt8) {
        position -= 2
        position.storeBytes(of: first, as: UInt8.self)
        (position + 1).storeBytes(of: second, as: UInt8.self)
    }

    /// Writes a varint.
    @inlinable @inline(__always)
    public mutating func writeVarint(_ value: UInt64) {
        if value < 0x80 {
            writeByte(UInt8(truncatingIfNeeded: value))
            return
        }
        position -= WireFormat.varintSize(value)
        var p = position
        var v = value
        while v >= 0x80 {
            p.storeBytes(of: UInt8(truncatingIfNeeded: v) | 0x80, as: UInt8.self)
            p += 1
            v >>= 7
        }
        p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
    }

    /// Writes a 32-bit varint.
    @inlinable @inline(__always)
    public mutating func writeVarint(_ value: UInt32) {
        writeVarint(UInt64(value))
    }

    /// Writes a length prefix for the bytes written since `end`.
    @inlinable @inline(__always)
    public mutating func writeLength(since end: UnsafeMutableRawPointer) {
        writeVarint(UInt64(truncatingIfNeeded: end - position))
    }

    /// Writes four little-endian bytes.
    @inlinable @inline(__always)
    public mutating func writeFixed32(_ value: UInt32) {
        position -= 4
        position.storeBytes(of: value.littleEndian, as: UInt32.self)
    }

    /// Writes eight little-endian bytes.
    @inlinable @inline(__always)
    public mutating func writeFixed64(_ value: UInt64) {
        position -= 8
        position.storeBytes(of: value.littleEndian, as: UInt64.self)
    }

    /// Copies raw bytes.
    @inlinable @inline(__always)
    public mutating func writeRaw(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        position -= bytes.count
        position.copyMemory(from: base, byteCount: bytes.count)
    }

    /// Writes a string's UTF-8 bytes with their length prefix.
    @inlinable @inline(__always)
    public mutating func writeString(_ value: String) {
        let count = value.utf8.count
        if value.utf8.withContiguousStorageIfAvailable({ writeRaw(UnsafeRawBufferPointer($0)) }) == nil {
            var copy = value
            copy.withUTF8 { writeRaw(UnsafeRawBufferPointer($0)) }
        }
        writeVarint(UInt64(truncatingIfNeeded: count))
    }

    /// Writes bytes with their length prefix.
    @inlinable @inline(__always)
    public mutating func writeBytes(_ value: [UInt8]) {
        value.withUnsafeBytes { writeRaw($0) }
        writeVarint(UInt64(truncatingIfNeeded: value.count))
    }

    /// Writes an embedded message with its length prefix.
    @inlinable @inline(__always)
    public mutating func writeMessage<M: ProtoMessage>(_ message: M) {
        let end = position
        message.encode(to: &self)
        writeLength(since: end)
    }
}
