/// A protobuf message: a value type that can be decoded from and encoded to the proto3 binary format.
///
/// Generated code conforms every message to this protocol; the entry points below (``init(serializedBytes:options:)``,
/// ``serializedBytes()``) are the API applications use.
///
/// ```swift
/// let event = Harpoon_V1_Event(id: 7, type: "droplet.create")
/// let bytes = event.serializedBytes()
/// let decoded = try Harpoon_V1_Event(serializedBytes: bytes)
/// ```
public protocol ProtoMessage: Hashable, Sendable {
    /// A message with every field at its default.
    init()
    /// The fully-qualified protobuf name, e.g. `bench.v1.Event`.
    static var protoMessageName: String { get }
    /// Fields read from the wire that this message's schema does not know, re-emitted on encode.
    var unknownFields: UnknownFields { get set }
    /// Reads fields until the end of the reader's current message, merging them into `self`.
    mutating func decodeMessage(from reader: inout WireReader) throws(ProtoDecodingError)
    /// The exact number of bytes ``encode(to:)`` writes.
    func encodedSize() -> Int
    /// Writes the unknown fields, then every non-default field in descending field-number order: backwards, so
    /// that the encoding reads in ascending order (see ``WireWriter``).
    func encode(to writer: inout WireWriter)
}

extension ProtoMessage {
    /// Decodes a message from its binary encoding.
    ///
    /// - Parameters:
    ///   - bytes: the encoded message.
    ///   - options: depth and size limits for untrusted input.
    /// - Throws: ``ProtoDecodingError`` naming what was wrong and in which field.
    @inlinable
    public init(serializedBytes bytes: [UInt8], options: DecodingOptions = DecodingOptions()) throws(ProtoDecodingError)
    {
        self.init()
        try merge(serializedBytes: bytes, options: options)
    }

    /// Decodes a message from the bytes of any collection (contiguous ones are read in place).
    @inlinable
    public init(
        serializedBytes bytes: some Collection<UInt8>,
        options: DecodingOptions = DecodingOptions()
    ) throws(ProtoDecodingError) {
        self.init()
        let result = bytes.withContiguousStorageIfAvailable { buffer in
            Result { () throws(ProtoDecodingError) in
                try merge(rawBuffer: UnsafeRawBufferPointer(buffer), options: options)
            }
        }
        if let result {
            try result.get()
        } else {
            try merge(serializedBytes: Array(bytes), options: options)
        }
    }

    /// Decodes `bytes` and merges the fields into `self`: scalars are replaced, repeated fields appended, embedded
    /// messages merged, as the protobuf specification defines.
    @inlinable
    public mutating func merge(
        serializedBytes bytes: [UInt8], options: DecodingOptions = DecodingOptions()
    ) throws(ProtoDecodingError) {
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(ProtoDecodingError) in try merge(rawBuffer: buffer, options: options) }
        }
        try result.get()
    }

    /// Decodes the bytes in `buffer` and merges the fields into `self`.
    @inlinable
    public mutating func merge(
        rawBuffer buffer: UnsafeRawBufferPointer, options: DecodingOptions = DecodingOptions()
    ) throws(ProtoDecodingError) {
        guard buffer.count <= options.maxSize else {
            throw ProtoDecodingError(.sizeLimitExceeded, offset: 0)
        }
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        var reader = WireReader(base: base, count: buffer.count, options: options)
        try decodeMessage(from: &reader)
    }

    /// Encodes the message: computes its size, allocates once, writes once.
    @inlinable
    public func serializedBytes() -> [UInt8] {
        let size = encodedSize()
        if size == 0 { return [] }
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            guard let base = buffer.baseAddress else { return }
            write(size: size, into: UnsafeMutableRawPointer(base))
            count = size
        }
    }

    /// Encodes the message into the start of `buffer` and returns the number of bytes written, or `nil` if the
    /// buffer is too small. For transports that frame messages into buffers of their own.
    @inlinable
    public func serialize(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        let size = encodedSize()
        guard size <= buffer.count else { return nil }
        guard let base = buffer.baseAddress, size > 0 else { return 0 }
        write(size: size, into: base)
        return size
    }

    /// Encodes the message into exactly `size` bytes at `base`, where `size` is this message's ``encodedSize()``
    /// computed by the caller (transports that write a length prefix first compute it once).
    @inlinable
    public func serialize(encodedSize size: Int, into base: UnsafeMutableRawPointer) {
        write(size: size, into: base)
    }

    @inlinable
    func write(size: Int, into base: UnsafeMutableRawPointer) {
        var writer = WireWriter(end: base + size)
        encode(to: &writer)
        // The size pass is the writer's contract: a mismatch is a bug in generated code, never input.
        precondition(writer.position == base, "encodedSize() and encode(to:) disagree for \(Self.protoMessageName)")
    }
}

/// A proto3 enum: open, so values the schema does not name survive a decode and re-encode.
///
/// Generated enums have one case per value plus `unrecognized(Int32)`.
public protocol ProtoEnum: RawRepresentable, Hashable, Sendable where RawValue == Int32 {
    /// The case for `rawValue`, or `unrecognized(rawValue)`.
    init(rawValue: Int32)
}

/// Immutable boxed storage for a message field whose type contains the message itself (directly or through other
/// singular fields), which a Swift struct cannot hold inline.
public final class ProtoBox<Value: Hashable & Sendable>: Hashable, Sendable {
    /// The boxed value.
    public let value: Value

    @inlinable
    public init(_ value: Value) { self.value = value }

    @inlinable
    public static func == (lhs: ProtoBox, rhs: ProtoBox) -> Bool { lhs === rhs || lhs.value == rhs.value }

    @inlinable
    public func hash(into hasher: inout Hasher) { value.hash(into: &hasher) }
}

/// Generated files refer to this type; when the runtime's contract with generated code changes, it is renamed so
/// that stale generated code fails to compile instead of misbehaving.
public enum ProtoGeneratedCodeVersion1 {}
