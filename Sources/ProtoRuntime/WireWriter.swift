/// Writes protobuf wire data into a buffer that was sized beforehand.
///
/// Encoding is two passes: generated code computes ``ProtoMessage/encodedSize()``, allocates exactly that many
/// bytes once, then writes into them with a writer. The writer does no bounds checks of its own; the size pass is
/// its contract, and ``ProtoMessage/serializedBytes()`` verifies the two agree.
public struct WireWriter {
    @usableFromInline var position: UnsafeMutableRawPointer

    /// A writer that starts at `base`, which must have room for everything written.
    @inlinable
    public init(base: UnsafeMutableRawPointer) {
        self.position = base
    }

    /// Where the next byte goes.
    @inlinable
    public var currentPosition: UnsafeMutableRawPointer { position }

    /// Writes one byte (a one-byte tag, typically).
    @inlinable @inline(__always)
    public mutating func writeByte(_ byte: UInt8) {
        position.storeBytes(of: byte, as: UInt8.self)
        position += 1
    }

    /// Writes two bytes (a two-byte tag, typically).
    @inlinable @inline(__always)
    public mutating func writeBytes(_ first: UInt8, _ second: UInt8) {
        position.storeBytes(of: first, as: UInt8.self)
        (position + 1).storeBytes(of: second, as: UInt8.self)
        position += 2
    }

    /// Writes a varint.
    @inlinable @inline(__always)
    public mutating func writeVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            position.storeBytes(of: UInt8(truncatingIfNeeded: v) | 0x80, as: UInt8.self)
            position += 1
            v >>= 7
        }
        position.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
        position += 1
    }

    /// Writes a 32-bit varint.
    @inlinable @inline(__always)
    public mutating func writeVarint(_ value: UInt32) {
        var v = value
        while v >= 0x80 {
            position.storeBytes(of: UInt8(truncatingIfNeeded: v) | 0x80, as: UInt8.self)
            position += 1
            v >>= 7
        }
        position.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
        position += 1
    }

    /// Writes a tag of any size.
    @inlinable @inline(__always)
    public mutating func writeTag(fieldNumber: Int, wireType: WireType) {
        writeVarint(WireFormat.tag(fieldNumber: fieldNumber, wireType: wireType))
    }

    /// Writes four little-endian bytes.
    @inlinable @inline(__always)
    public mutating func writeFixed32(_ value: UInt32) {
        position.storeBytes(of: value.littleEndian, as: UInt32.self)
        position += 4
    }

    /// Writes eight little-endian bytes.
    @inlinable @inline(__always)
    public mutating func writeFixed64(_ value: UInt64) {
        position.storeBytes(of: value.littleEndian, as: UInt64.self)
        position += 8
    }

    /// Copies raw bytes.
    @inlinable @inline(__always)
    public mutating func writeRaw(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        position.copyMemory(from: base, byteCount: bytes.count)
        position += bytes.count
    }

    /// Writes a string's UTF-8 bytes with their length prefix.
    @inlinable @inline(__always)
    public mutating func writeString(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            writeVarint(UInt64(truncatingIfNeeded: utf8.count))
            writeRaw(UnsafeRawBufferPointer(utf8))
        }
    }

    /// Writes bytes with their length prefix.
    @inlinable @inline(__always)
    public mutating func writeBytes(_ value: [UInt8]) {
        writeVarint(UInt64(truncatingIfNeeded: value.count))
        value.withUnsafeBytes { writeRaw($0) }
    }

    /// Writes an embedded message with its length prefix.
    @inlinable @inline(__always)
    public mutating func writeMessage<M: ProtoMessage>(_ message: M) {
        writeVarint(UInt64(truncatingIfNeeded: message.encodedSize()))
        message.encode(to: &self)
    }
}
