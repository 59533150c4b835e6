internal import CZlib

/// gzip with zlib.
enum Gzip {
    /// Compresses `bytes` into a gzip member.
    static func compress(_ bytes: UnsafeRawBufferPointer) throws(RPCError) -> [UInt8] {
        var stream = z_stream()
        guard shoal_deflate_init_gzip(&stream, Z_DEFAULT_COMPRESSION) == Z_OK else {
            throw RPCError(code: .internal, message: "zlib: cannot start compressing")
        }
        defer { deflateEnd(&stream) }
        let bound = Int(deflateBound(&stream, uLong(bytes.count)))
        var output = [UInt8](repeating: 0, count: max(bound, 32))
        let written: Int = output.withUnsafeMutableBytes { out in
            stream.next_in = UnsafeMutablePointer(mutating: bytes.bindMemory(to: Bytef.self).baseAddress)
            stream.avail_in = uInt(bytes.count)
            stream.next_out = out.bindMemory(to: Bytef.self).baseAddress
            stream.avail_out = uInt(out.count)
            let status = deflate(&stream, Z_FINISH)
            return status == Z_STREAM_END ? out.count - Int(stream.avail_out) : -1
        }
        guard written >= 0 else { throw RPCError(code: .internal, message: "zlib: compression failed") }
        output.removeLast(output.count - written)
        return output
    }

    /// Decompresses a gzip (or zlib) stream, refusing to produce more than `limit` bytes.
    static func decompress(_ bytes: [UInt8], limit: Int) throws(RPCError) -> [UInt8] {
        var stream = z_stream()
        guard shoal_inflate_init_gzip(&stream) == Z_OK else {
            throw RPCError(code: .internal, message: "zlib: cannot start decompressing")
        }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        let result: Int32 = bytes.withUnsafeBytes { input in
            stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
            stream.avail_in = uInt(input.count)
            while true {
                let (status, produced) = chunk.withUnsafeMutableBytes { out -> (Int32, Int) in
                    stream.next_out = out.bindMemory(to: Bytef.self).baseAddress
                    stream.avail_out = uInt(out.count)
                    let status = inflate(&stream, Z_NO_FLUSH)
                    return (status, out.count - Int(stream.avail_out))
                }
                if produced > 0 {
                    if output.count + produced > limit { return Z_MEM_ERROR }
                    output.append(contentsOf: chunk[0..<produced])
                }
                if status == Z_STREAM_END { return Z_STREAM_END }
                if status != Z_OK { return status }
                if stream.avail_in == 0, produced == 0 { return Z_BUF_ERROR }
            }
        }
        switch result {
        case Z_STREAM_END: return output
        case Z_MEM_ERROR:
            throw RPCError(
                code: .resourceExhausted, message: "a compressed message decompresses to more than \(limit) bytes")
        default: throw RPCError(code: .internal, message: "a compressed message is not valid gzip")
        }
    }
}

extension GRPCMessageDeframer {
    /// Hands every whole message received so far to `queue`, decompressing gzip ones (bounded by `limit`).
    mutating func drain(into queue: InboundMessageQueue, decompressionLimit limit: Int) throws(RPCError) {
        while let message = try next() {
            queue.push(message.isCompressed ? try Gzip.decompress(message.bytes, limit: limit) : message.bytes)
        }
    }
}
