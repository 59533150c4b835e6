internal import NIOCore
internal import ProtoRuntime
internal import RPCCore

/// Encoding messages into gRPC frames and decoding received ones.
enum MessageCoding {
    /// The message with its 5-byte gRPC prefix; compressed (flag 1) if `encoding` is gzip.
    static func frame<Message: ProtoMessage>(
        _ message: Message, encoding: MessageEncoding, allocator: ByteBufferAllocator
    ) throws(RPCError) -> ByteBuffer {
        guard encoding == .gzip else { return frame(message, allocator: allocator) }
        let serialized = message.serializedBytes()
        let compressed = try serialized.withUnsafeBytes { bytes in
            Result { () throws(RPCError) in try Gzip.compress(bytes) }
        }.get()
        var buffer = allocator.buffer(capacity: compressed.count + 5)
        buffer.writeInteger(UInt8(1))
        buffer.writeInteger(UInt32(truncatingIfNeeded: compressed.count))
        buffer.writeBytes(compressed)
        return buffer
    }

    /// The message with its 5-byte gRPC prefix, in one buffer sized exactly.
    static func frame<Message: ProtoMessage>(_ message: Message, allocator: ByteBufferAllocator) -> ByteBuffer {
        let size = message.encodedSize()
        var buffer = allocator.buffer(capacity: size + 5)
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(UInt32(truncatingIfNeeded: size))
        if size > 0 {
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { bytes in
                guard let base = bytes.baseAddress else { return 0 }
                message.serialize(encodedSize: size, into: base)
                return size
            }
        }
        return buffer
    }

    static func decode<Message: ProtoMessage>(
        _ bytes: [UInt8], as type: Message.Type = Message.self
    ) throws(RPCError) -> Message {
        do {
            return try Message(serializedBytes: bytes)
        } catch {
            throw RPCError(code: .internal, message: "could not decode \(Message.protoMessageName): \(error)")
        }
    }
}
