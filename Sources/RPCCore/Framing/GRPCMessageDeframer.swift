/// Splits the bytes of a gRPC stream (HTTP/2 DATA frames, in any split) back into messages.
///
/// Bytes go in with ``append(_:)`` as they arrive; ``next()`` returns each whole message once all its bytes are
/// there. Limits are checked on the prefix, before anything is buffered for the message, so a peer cannot make the
/// receiver hold more than the limit: a declared length above `maxMessageSize` is `RESOURCE_EXHAUSTED`, as the gRPC
/// specification requires. A malformed prefix is `INTERNAL`; the deframer stays failed after any error.
public struct GRPCMessageDeframer: Sendable {
    /// A message as it came off the wire.
    public struct Message: Hashable, Sendable {
        /// The message bytes (still compressed when `isCompressed`).
        public var bytes: [UInt8]
        /// Whether the sender set the compressed flag.
        public var isCompressed: Bool
    }

    private var buffer: [UInt8] = []
    private var readIndex = 0
    private var failure: RPCError?
    private let maxMessageSize: Int
    private let acceptsCompressed: Bool

    /// - Parameters:
    ///   - maxMessageSize: the largest message accepted, in bytes (gRPC's default is 4 MiB).
    ///   - acceptsCompressed: whether the stream negotiated a `grpc-encoding`; if not, a compressed message is an
    ///     error.
    public init(maxMessageSize: Int = 4 * 1024 * 1024, acceptsCompressed: Bool = false) {
        self.maxMessageSize = maxMessageSize
        self.acceptsCompressed = acceptsCompressed
    }

    /// The bytes received but not yet returned as messages.
    public var bufferedByteCount: Int { buffer.count - readIndex }

    /// Adds received bytes.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard failure == nil, !bytes.isEmpty else { return }
        // Drop what has been consumed before growing, so the buffer holds at most one message and a prefix.
        if readIndex > 0 && readIndex >= buffer.count / 2 {
            buffer.removeSubrange(0..<readIndex)
            readIndex = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// Adds received bytes.
    public mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    /// The next whole message, or `nil` until more bytes arrive.
    public mutating func next() throws(RPCError) -> Message? {
        if let failure { throw failure }
        let available = buffer.count - readIndex
        guard available >= GRPCMessageFramer.prefixSize else { return nil }
        let flag = buffer[readIndex]
        var length = 0
        for i in 1...4 { length = length << 8 | Int(buffer[readIndex + i]) }
        switch flag {
        case 0: break
        case 1:
            guard acceptsCompressed else {
                return try fail(
                    RPCError(code: .internal, message: "compressed message on a stream without grpc-encoding"))
            }
        default:
            return try fail(RPCError(code: .internal, message: "invalid compressed flag \(flag) in message prefix"))
        }
        guard length <= maxMessageSize else {
            return try fail(
                RPCError(
                    code: .resourceExhausted,
                    message: "message of \(length) bytes is larger than the limit of \(maxMessageSize) bytes"
                ))
        }
        guard available - GRPCMessageFramer.prefixSize >= length else { return nil }
        let start = readIndex + GRPCMessageFramer.prefixSize
        let message = Message(bytes: Array(buffer[start..<(start + length)]), isCompressed: flag == 1)
        readIndex = start + length
        if readIndex == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            readIndex = 0
        }
        return message
    }

    /// Adds received bytes and hands every message they complete to `deliver`, in order.
    ///
    /// - Throws: the deframer's error (a malformed prefix, a message over the limit), or `deliver`'s.
    public mutating func append(
        _ bytes: UnsafeRawBufferPointer, deliveringTo deliver: (Message) throws(RPCError) -> Void
    ) throws(RPCError) {
        append(bytes)
        while let message = try next() { try deliver(message) }
    }

    /// Checks that the stream ended between messages.
    ///
    /// - Throws: `INTERNAL` if bytes of an unfinished message (or prefix) remain.
    public mutating func finish() throws(RPCError) {
        if let failure { throw failure }
        if bufferedByteCount > 0 {
            try fail(
                RPCError(
                    code: .internal, message: "stream ended inside a message (\(bufferedByteCount) bytes left over)"))
        }
    }

    @discardableResult
    private mutating func fail(_ error: RPCError) throws(RPCError) -> Message? {
        failure = error
        buffer = []
        readIndex = 0
        throw error
    }
}
