#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

/// Reads protobuf wire data from contiguous memory without copying.
///
/// Generated decoders drive a reader field by field: ``nextTag()`` until it returns `nil`, then one `read…` call
/// per field. Every read checks bounds against the end of the current (sub)message and throws a
/// ``ProtoDecodingError`` instead of reading past it; nothing is copied except into `string` and `bytes` values.
/// A reader is only valid inside the `withUnsafeBytes` scope that created it.
public struct WireReader {
    @usableFromInline var position: UnsafeRawPointer
    @usableFromInline var end: UnsafeRawPointer
    @usableFromInline let start: UnsafeRawPointer
    @usableFromInline var depthRemaining: Int
    /// Where the tag last returned by ``nextTag()`` began, so unknown fields can be kept byte for byte.
    @usableFromInline var tagStart: UnsafeRawPointer

    /// A reader over `count` bytes at `base`.
    @inlinable
    public init(base: UnsafeRawPointer, count: Int, options: DecodingOptions) {
        self.position = base
        self.start = base
        self.end = base + count
        self.tagStart = base
        self.depthRemaining = options.maxDepth
    }

    /// The offset of the read position from the start of the input, for error reports.
    @inlinable
    public var offset: Int { position - start }

    /// Whether every byte of the current (sub)message has been read.
    @inlinable
    public var isAtEnd: Bool { position >= end }

    @inlinable
    func error(_ code: ProtoDecodingError.Code) -> ProtoDecodingError {
        ProtoDecodingError(code, offset: position - start)
    }

    // MARK: - Varints

    /// Reads a varint of up to ten bytes.
    @inlinable @inline(__always)
    public mutating func readVarint() throws(ProtoDecodingError) -> UInt64 {
        if position < end {
            let byte = position.load(as: UInt8.self)
            if byte < 0x80 {
                position += 1
                return UInt64(byte)
            }
        }
        return try readVarintSlow()
    }

    @usableFromInline
    mutating func readVarintSlow() throws(ProtoDecodingError) -> UInt64 {
        guard end - position >= WireFormat.maxVarintLength else { return try readVarintBounded() }
        // Ten bytes are available: no bounds checks, unrolled (the first byte is known to continue).
        let p = position.assumingMemoryBound(to: UInt8.self)
        var result = UInt64(p[0] & 0x7F)
        var shift: UInt64 = 7
        for i in 1..<9 {
            let byte = p[i]
            result |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 {
                position += i + 1
                return result
            }
            shift += 7
        }
        // The tenth byte holds only the top bit of a 64-bit value.
        let last = p[9]
        guard last <= 1 else {
            position += 9
            throw error(.malformedVarint)
        }
        position += 10
        return result | UInt64(last) << 63
    }

    /// The varint slow path near the end of the input, checking every byte.
    @usableFromInline
    mutating func readVarintBounded() throws(ProtoDecodingError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        var p = position
        while true {
            guard p < end else { throw error(.truncated) }
            let byte = p.load(as: UInt8.self)
            p += 1
            if shift == 63 {
                guard byte <= 1 else {
                    position = p - 1
                    throw error(.malformedVarint)
                }
            }
            result |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { break }
            shift += 7
        }
        position = p
        return result
    }

    /// Reads the next field's tag, or returns `nil` at the end of the current message.
    ///
    /// Throws for field number 0 and for tags that do not fit in 32 bits; wire types are checked where the field is
    /// read or skipped.
    @inlinable @inline(__always)
    public mutating func nextTag() throws(ProtoDecodingError) -> UInt32? {
        guard position < end else { return nil }
        tagStart = position
        let byte = position.load(as: UInt8.self)
        if byte >= 0x08 && byte < 0x80 {
            position += 1
            return UInt32(byte)
        }
        return try nextTagSlow()
    }

    @usableFromInline
    mutating func nextTagSlow() throws(ProtoDecodingError) -> UInt32 {
        let raw = try readVarint()
        guard raw <= UInt64(UInt32.max) else {
            position = tagStart
            throw error(.invalidFieldNumber)
        }
        guard raw >> 3 != 0 else {
            position = tagStart
            throw error(.invalidFieldNumber)
        }
        return UInt32(truncatingIfNeeded: raw)
    }

    // MARK: - Fixed width

    /// Reads four little-endian bytes.
    @inlinable @inline(__always)
    public mutating func readFixed32() throws(ProtoDecodingError) -> UInt32 {
        guard end - position >= 4 else { throw error(.truncated) }
        let value = UInt32(littleEndian: position.loadUnaligned(as: UInt32.self))
        position += 4
        return value
    }

    /// Reads eight little-endian bytes.
    @inlinable @inline(__always)
    public mutating func readFixed64() throws(ProtoDecodingError) -> UInt64 {
        guard end - position >= 8 else { throw error(.truncated) }
        let value = UInt64(littleEndian: position.loadUnaligned(as: UInt64.self))
        position += 8
        return value
    }

    // MARK: - Length-delimited

    /// Reads a length prefix and checks that that many bytes remain in the current message.
    @inlinable @inline(__always)
    public mutating func readLength() throws(ProtoDecodingError) -> Int {
        let length = try readVarint()
        guard length <= UInt64(end - position) else { throw error(.lengthOutOfBounds) }
        return Int(truncatingIfNeeded: length)
    }

    /// Reads a length-delimited field and returns its bytes, valid for the reader's lifetime.
    @inlinable @inline(__always)
    public mutating func readLengthDelimited() throws(ProtoDecodingError) -> UnsafeRawBufferPointer {
        let length = try readLength()
        let bytes = UnsafeRawBufferPointer(start: position, count: length)
        position += length
        return bytes
    }

    /// Reads a `string` field, rejecting invalid UTF-8.
    @inlinable
    public mutating func readString() throws(ProtoDecodingError) -> String {
        let length = try readLength()
        if length == 0 { return "" }
        let bytes = UnsafeBufferPointer(start: position.assumingMemoryBound(to: UInt8.self), count: length)
        guard UTF8Validation.isValid(bytes) else { throw error(.invalidUTF8) }
        let source = position
        position += length
        return String(unsafeUninitializedCapacity: length) { buffer in
            buffer.baseAddress.map { UnsafeMutableRawPointer($0).copyMemory(from: source, byteCount: length) }
            return length
        }
    }

    /// Reads a `bytes` field into a new array.
    @inlinable
    public mutating func readBytes() throws(ProtoDecodingError) -> [UInt8] {
        let length = try readLength()
        if length == 0 { return [] }
        let bytes = [UInt8](UnsafeRawBufferPointer(start: position, count: length))
        position += length
        return bytes
    }

    /// Reads a length-delimited embedded message and merges it into `message`.
    ///
    /// Merging is what the format requires when a singular message field occurs more than once.
    @inlinable
    public mutating func readMessage<M: ProtoMessage>(into message: inout M) throws(ProtoDecodingError) {
        let length = try readLength()
        guard depthRemaining > 0 else { throw error(.depthLimitExceeded) }
        let savedEnd = end
        end = position + length
        depthRemaining -= 1
        try message.decodeMessage(from: &self)
        depthRemaining += 1
        end = savedEnd
    }

    /// Reads an embedded message into an optional field, merging with a value already present.
    @inlinable
    public mutating func readMessage<M: ProtoMessage>(into field: inout M?) throws(ProtoDecodingError) {
        var message = field ?? M()
        field = nil  // keep `message` uniquely referenced while it is decoded
        try readMessage(into: &message)
        field = message
    }

    /// Reads an embedded message and appends it to a repeated field.
    @inlinable
    public mutating func readMessage<M: ProtoMessage>(appendingTo field: inout [M]) throws(ProtoDecodingError) {
        // Elements of one repeated field usually stand together: count them first so the array is sized once.
        if field.isEmpty { field.reserveCapacity(countContiguousEntries()) }
        var message = M()
        try readMessage(into: &message)
        field.append(message)
    }

    // MARK: - Repeated and map fields

    /// Reads one element of a repeated `string` or `bytes` field (the tag was just read) and appends it to `field`.
    @inlinable
    public mutating func readElement<F: ProtoFieldCodec>(
        _: F.Type,
        appendingTo field: inout [F.Value]
    ) throws(ProtoDecodingError) {
        if field.isEmpty { field.reserveCapacity(countContiguousEntries()) }
        field.append(try F.read(from: &self))
    }

    /// Reads a packed run of scalars and appends them to `field`.
    @inlinable
    public mutating func readPacked<F: ProtoPackableCodec>(
        _: F.Type,
        into field: inout [F.Value]
    ) throws(ProtoDecodingError) {
        let length = try readLength()
        #if _endian(little)
            // Fixed-width runs are the in-memory layout already: one copy, no per-element work.
            if F.wireType == .fixed32 || F.wireType == .fixed64 {
                let width = F.wireType == .fixed32 ? 4 : 8
                if MemoryLayout<F.Value>.size == width && MemoryLayout<F.Value>.stride == width {
                    let count = length / width
                    guard count * width == length else {
                        position += count * width  // the error points at the partial element
                        throw error(.truncated)
                    }
                    // Grow once, then one copy straight from the input into the array's new tail.
                    field.append(contentsOf: UnalignedRun<F.Value>(start: position, count: count))
                    position += length
                    return
                }
            }
        #endif
        let savedEnd = end
        end = position + length
        field.reserveCapacity(
            field.count + F.elementCountUpperBound(in: UnsafeRawBufferPointer(start: position, count: length)))
        while position < end {
            field.append(try F.read(from: &self))
        }
        end = savedEnd
    }

    /// Reads one `map` entry (a key/value message) and stores it in `map`; a later key replaces an earlier one.
    @inlinable
    public mutating func readMapEntry<K: ProtoFieldCodec, V: ProtoFieldCodec>(
        _: K.Type,
        _: V.Type,
        into map: inout ProtoMap<K.Value, V.Value>
    ) throws(ProtoDecodingError) {
        if map.isEmpty {
            // Entries of one map usually stand together: count them first so the storage is sized once.
            map.storage.reserveCapacity(countContiguousEntries())
        }
        let length = try readLength()
        guard depthRemaining > 0 else { throw error(.depthLimitExceeded) }
        let savedEnd = end
        end = position + length
        depthRemaining -= 1
        var key = K.defaultValue
        var value = V.defaultValue
        let keyTag = WireFormat.tag(fieldNumber: 1, wireType: K.wireType)
        let valueTag = WireFormat.tag(fieldNumber: 2, wireType: V.wireType)
        while let tag = try nextTag() {
            if tag == keyTag {
                key = try K.read(from: &self)
            } else if tag == valueTag {
                try V.merge(from: &self, into: &value)
            } else {
                try skipField(tag: tag)
            }
        }
        depthRemaining += 1
        end = savedEnd
        map.updateValue(value, forKey: key)
    }

    /// The number of length-delimited fields from here on that carry the tag just read, back to back.
    /// Reads only lengths and tags, within bounds; stops at anything unexpected (the real decode reports it).
    @usableFromInline
    func countContiguousEntries() -> Int {
        // A copy of the reader walks ahead with the same bounded reads; `self` does not move.
        let tagLength = position - tagStart
        var probe = self
        var count = 0
        while true {
            guard let length = try? probe.readLength() else { return max(count, 1) }
            probe.position += length
            count += 1
            guard probe.end - probe.position >= tagLength, Self.bytesEqual(probe.position, tagStart, tagLength) else {
                return count
            }
            probe.position += tagLength
        }
    }

    /// Whether two short byte ranges (a tag: 1 to 5 bytes) are equal, without calling `memcmp`.
    @inlinable @inline(__always)
    static func bytesEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
        for i in 0..<count where a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self)
        {
            return false
        }
        return true
    }

    // MARK: - Unknown fields

    /// Skips the field whose tag was just read and keeps its bytes, tag included, in `unknownFields`.
    @inlinable
    public mutating func skipField(tag: UInt32, into unknownFields: inout UnknownFields) throws(ProtoDecodingError) {
        let fieldStart = tagStart
        try skipField(tag: tag)
        unknownFields.append(UnsafeRawBufferPointer(start: fieldStart, count: position - fieldStart))
    }

    /// Skips the value of the field whose tag was just read.
    @usableFromInline
    mutating func skipField(tag: UInt32) throws(ProtoDecodingError) {
        switch tag & 7 {
        case 0: _ = try readVarint()
        case 1: _ = try readFixed64()
        case 2: position += try readLength()
        case 5: _ = try readFixed32()
        case 3: try skipGroup(fieldNumber: tag >> 3)
        case 4:
            position = tagStart
            throw error(.unmatchedEndGroup)
        default:
            position = tagStart
            throw error(.invalidWireType)
        }
    }

    @usableFromInline
    mutating func skipGroup(fieldNumber: UInt32) throws(ProtoDecodingError) {
        guard depthRemaining > 0 else { throw error(.depthLimitExceeded) }
        depthRemaining -= 1
        while true {
            guard let tag = try nextTag() else { throw error(.truncated) }
            if tag & 7 == 4 {
                guard tag >> 3 == fieldNumber else {
                    position = tagStart
                    throw error(.unmatchedEndGroup)
                }
                break
            }
            try skipField(tag: tag)
        }
        depthRemaining += 1
    }
}

/// `count` fixed-width little-endian values stored back to back at `start`, with no alignment: a packed fixed32 or
/// fixed64 run on a little-endian machine, whose bytes are already the in-memory layout of the values.
///
/// `Array.append(contentsOf:)` copies a sequence into the array's new tail through `_copyContents(initializing:)`;
/// this one does it with one `memcpy`, so appending a run is one growth and one copy. (Building the array with
/// `Array(unsafeUninitializedCapacity:)` or `Array(repeating:count:)` instead looked up generic metadata on every
/// call, which cost more than the copy.) `Element` must be a trivial type of the run's width.
@usableFromInline
struct UnalignedRun<Element>: Sequence, IteratorProtocol {
    /// The next value's bytes.
    @usableFromInline var start: UnsafeRawPointer
    /// Values left.
    @usableFromInline var count: Int

    @inlinable
    init(start: UnsafeRawPointer, count: Int) {
        self.start = start
        self.count = count
    }

    @inlinable
    var underestimatedCount: Int { count }

    @inlinable
    mutating func next() -> Element? {
        guard count > 0 else { return nil }
        let value = start.loadUnaligned(as: Element.self)
        start += MemoryLayout<Element>.stride
        count -= 1
        return value
    }

    @inlinable
    func _copyContents(initializing buffer: UnsafeMutableBufferPointer<Element>) -> (UnalignedRun, Int) {
        let copied = Swift.min(count, buffer.count)
        if copied > 0, let destination = buffer.baseAddress {
            UnsafeMutableRawPointer(destination).copyMemory(
                from: start, byteCount: copied * MemoryLayout<Element>.stride)
        }
        return (UnalignedRun(start: start + copied * MemoryLayout<Element>.stride, count: count - copied), copied)
    }
}
