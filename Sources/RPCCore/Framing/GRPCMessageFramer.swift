/// Frames messages for a gRPC stream: each one is a compressed flag (one byte), its length (four bytes, big-endian),
/// then its bytes, as the gRPC over HTTP/2 protocol defines a Length-Prefixed-Message.
package enum GRPCMessageFramer {
    /// The size of the prefix before each message.
    package static let prefixSize = 5

    /// The largest message the four-byte length can describe.
    package static let maxMessageSize = Int(UInt32.max)

    /// Appends `message` with its prefix to `output`.
    ///
    /// - Parameter compressed: whether `message` is already compressed with the stream's `grpc-encoding`.
    package static func append(_ message: [UInt8], compressed: Bool, to output: inout [UInt8]) {
        let length = UInt32(truncatingIfNeeded: message.count)
        output.reserveCapacity(output.count + prefixSize + message.count)
        output.append(compressed ? 1 : 0)
        output.append(UInt8(truncatingIfNeeded: length >> 24))
        output.append(UInt8(truncatingIfNeeded: length >> 16))
        output.append(UInt8(truncatingIfNeeded: length >> 8))
        output.append(UInt8(truncatingIfNeeded: length))
        output.append(contentsOf: message)
    }
}
