/// Fields a decoder did not recognise, kept byte for byte and written back on encode.
///
/// This is what lets a message pass through a service built with an older schema without losing data: the service
/// decodes, changes what it knows, and re-encodes; the fields it does not know travel along untouched.
public struct UnknownFields: Hashable, Sendable {
    /// The raw wire bytes of the unknown fields, tags included, in the order they were read.
    public var bytes: [UInt8]

    @inlinable
    public init() { bytes = [] }

    /// Unknown fields from raw wire bytes.
    @inlinable
    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// Whether there are no unknown fields.
    @inlinable
    public var isEmpty: Bool { bytes.isEmpty }

    @inlinable
    mutating func append(_ raw: UnsafeRawBufferPointer) {
        bytes.append(contentsOf: raw)
    }

    /// The number of bytes the unknown fields add to an encoding.
    @inlinable
    public var encodedSize: Int { bytes.count }

    /// Writes the unknown fields back (last in the encoding, so first for the backward writer).
    @inlinable
    public func encode(to writer: inout WireWriter) {
        if bytes.isEmpty { return }
        bytes.withUnsafeBytes { writer.writeRaw($0) }
    }
}
