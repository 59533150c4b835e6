/// An error from decoding protobuf binary data.
///
/// Every decoding failure is one of these: the runtime never traps on bad input. `code` says what was wrong,
/// `fieldPath` where (outermost field first, repeated fields with their index, e.g. `events[3].payload.action`),
/// and `offset` the byte offset in the input at which the problem was found.
public struct ProtoDecodingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kinds of decoding failure. New codes may be added; switch with a `default`.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        @usableFromInline
        enum Wrapped: Hashable, Sendable {
            case truncated, malformedVarint, invalidWireType, invalidFieldNumber, lengthOutOfBounds
            case invalidUTF8, depthLimitExceeded, sizeLimitExceeded, unmatchedEndGroup
        }
        @usableFromInline let wrapped: Wrapped
        @usableFromInline init(_ wrapped: Wrapped) { self.wrapped = wrapped }

        /// The input ended in the middle of a tag, value or length-delimited field.
        public static let truncated = Code(.truncated)
        /// A varint was longer than ten bytes or overflowed 64 bits.
        public static let malformedVarint = Code(.malformedVarint)
        /// A tag carried wire type 6 or 7, or a wire type the field cannot have.
        public static let invalidWireType = Code(.invalidWireType)
        /// A tag carried field number 0 or one above 2^29 - 1.
        public static let invalidFieldNumber = Code(.invalidFieldNumber)
        /// A length prefix pointed past the end of the enclosing message.
        public static let lengthOutOfBounds = Code(.lengthOutOfBounds)
        /// A `string` field held bytes that are not valid UTF-8.
        public static let invalidUTF8 = Code(.invalidUTF8)
        /// Messages or groups were nested deeper than ``DecodingOptions/maxDepth``.
        public static let depthLimitExceeded = Code(.depthLimitExceeded)
        /// The input was larger than ``DecodingOptions/maxSize``.
        public static let sizeLimitExceeded = Code(.sizeLimitExceeded)
        /// An end-group tag had no matching start-group tag.
        public static let unmatchedEndGroup = Code(.unmatchedEndGroup)

        public var description: String {
            switch wrapped {
            case .truncated: "truncated input"
            case .malformedVarint: "malformed varint"
            case .invalidWireType: "invalid wire type"
            case .invalidFieldNumber: "invalid field number"
            case .lengthOutOfBounds: "length past the end of the message"
            case .invalidUTF8: "invalid UTF-8 in a string field"
            case .depthLimitExceeded: "nesting depth limit exceeded"
            case .sizeLimitExceeded: "message size limit exceeded"
            case .unmatchedEndGroup: "end-group tag without a matching start"
            }
        }
    }

    /// What was wrong.
    public var code: Code
    /// The path of fields from the outermost message to the one being decoded, e.g. `["events[3]", "payload"]`.
    public var fieldPath: [String]
    /// The byte offset in the input where the problem was found.
    public var offset: Int

    @inlinable
    public init(_ code: Code, offset: Int, fieldPath: [String] = []) {
        self.code = code
        self.offset = offset
        self.fieldPath = fieldPath
    }

    /// This error, one level further out: `component` is prepended to ``fieldPath``.
    ///
    /// Generated decoders call this as the error leaves a field's decoding.
    @inlinable
    public func inField(_ component: String?) -> ProtoDecodingError {
        guard let component else { return self }
        var copy = self
        copy.fieldPath.insert(component, at: 0)
        return copy
    }

    public var description: String {
        let path = fieldPath.isEmpty ? "" : " in field \(fieldPath.joined(separator: "."))"
        return "protobuf decoding failed: \(code)\(path) at byte \(offset)"
    }
}

/// Limits that keep decoding of untrusted input bounded.
public struct DecodingOptions: Sendable, Hashable {
    /// How deeply messages (and groups in unknown fields) may nest. Default 100, as in the reference implementations.
    public var maxDepth: Int
    /// The largest input accepted, in bytes. Default 2 GiB - 1, the format's own limit.
    public var maxSize: Int

    public init(maxDepth: Int = 100, maxSize: Int = Int(Int32.max)) {
        self.maxDepth = maxDepth
        self.maxSize = maxSize
    }
}
