// Sizing and writing of repeated, packed and map fields, shared by all generated messages.

extension WireFormat {
    /// The payload size of a packed run (without tag and length prefix).
    @inlinable
    public static func packedPayloadSize<F: ProtoPackableCodec>(_: F.Type, _ values: [F.Value]) -> Int {
        switch F.wireType {
        case .fixed32: return values.count &* 4
        case .fixed64: return values.count &* 8
        default:
            return values.withUnsafeBufferPointer { buffer in
                var size = 0
                for i in buffer.indices { size &+= F.encodedSize(of: buffer[i]) }
                return size
            }
        }
    }

    /// The full size of a packed field: tag, length prefix and payload; zero when empty.
    @inlinable
    public static func packedFieldSize<F: ProtoPackableCodec>(_: F.Type, _ values: [F.Value], tagSize: Int) -> Int {
        if values.isEmpty { return 0 }
        return tagSize &+ lengthDelimitedSize(packedPayloadSize(F.self, values))
    }

    /// The full size of an unpacked repeated field: one tag per element plus the elements.
    @inlinable
    public static func repeatedFieldSize<F: ProtoFieldCodec>(_: F.Type, _ values: [F.Value], tagSize: Int) -> Int {
        // Elements are read in place through the buffer: iterating the array would copy (retain) each one.
        values.withUnsafeBufferPointer { buffer in
            var size = buffer.count &* tagSize
            for i in buffer.indices { size &+= F.encodedSize(of: buffer[i]) }
            return size
        }
    }

    /// The payload size of one map entry (key is field 1, value field 2; both always written).
    @inlinable @inline(__always)
    public static func mapEntrySize<K: ProtoFieldCodec, V: ProtoFieldCodec>(
        _: K.Type, _: V.Type, key: K.Value, value: V.Value
    ) -> Int {
        2 &+ K.encodedSize(of: key) &+ V.encodedSize(of: value)
    }

    /// The full size of a map field: one tagged, length-prefixed entry per key.
    @inlinable
    public static func mapFieldSize<K: ProtoFieldCodec, V: ProtoFieldCodec>(
        _: K.Type, _: V.Type, _ map: ProtoMap<K.Value, V.Value>, tagSize: Int
    ) -> Int {
        map.storage.withUnsafeBufferPointer { entries in
            var size = entries.count &* tagSize
            for i in entries.indices {
                size &+= lengthDelimitedSize(mapEntrySize(K.self, V.self, key: entries[i].key, value: entries[i].value))
            }
            return size
        }
    }
}

extension WireWriter {
    /// Writes a packed field (tag, length, values); nothing when empty.
    @inlinable
    public mutating func writePacked<F: ProtoPackableCodec>(_: F.Type, _ values: [F.Value], tag: UInt32) {
        if values.isEmpty { return }
        let end = position
        values.withUnsafeBufferPointer { buffer in
            var i = buffer.count
            while i > 0 {
                i &-= 1
                F.write(buffer[i], to: &self)
            }
        }
        writeLength(since: end)
        writeVarint(tag)
    }

    /// Writes an unpacked repeated field: each element with its own tag.
    @inlinable
    public mutating func writeRepeated<F: ProtoFieldCodec>(_: F.Type, _ values: [F.Value], tag: UInt32) {
        var i = values.count
        while i > 0 {
            i &-= 1
            F.write(values[i], to: &self)
            writeVarint(tag)
        }
    }

    /// Writes a map field, one entry message per key.
    @inlinable
    public mutating func writeMap<K: ProtoFieldCodec, V: ProtoFieldCodec>(
        _: K.Type, _: V.Type, _ map: ProtoMap<K.Value, V.Value>, tag: UInt32
    ) {
        // Backwards, so that the encoding lists the entries in the map's order.
        let entries = map.storage
        var i = entries.count
        while i > 0 {
            i &-= 1
            let end = position
            V.write(entries[i].value, to: &self)
            writeByte(UInt8(truncatingIfNeeded: WireFormat.tag(fieldNumber: 2, wireType: V.wireType)))
            K.write(entries[i].key, to: &self)
            writeByte(UInt8(truncatingIfNeeded: WireFormat.tag(fieldNumber: 1, wireType: K.wireType)))
            writeLength(since: end)
            writeVarint(tag)
        }
    }
}
