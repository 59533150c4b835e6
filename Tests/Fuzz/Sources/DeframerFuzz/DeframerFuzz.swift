// libFuzzer entry point for the gRPC message deframer (`make fuzz`).
//
// The first input byte picks the size limit and how the rest is split into chunks (as HTTP/2 DATA frames would
// split it); the rest is the stream. Whatever the input, the deframer must return whole messages no larger than the
// limit, account for every byte it consumed, and fail with a typed error, never trap.
import RPCCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    let control = data[0]
    let stream = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    let maxMessageSize = [0, 1, 16, 1024, 1 << 22][Int(control & 0x07) % 5]
    let chunkSize = [1, 2, 3, 5, 7, 64, 4096, Int.max][Int(control >> 3) & 0x07]
    var deframer = GRPCMessageDeframer(maxMessageSize: maxMessageSize, acceptsCompressed: control & 0x40 != 0)
    var consumed = 0
    var offset = 0
    do {
        while offset < stream.count {
            let end = stream.count - offset > chunkSize ? offset + chunkSize : stream.count
            deframer.append(UnsafeRawBufferPointer(rebasing: stream[offset..<end]))
            offset = end
            while let message = try deframer.next() {
                precondition(message.bytes.count <= maxMessageSize, "a message over the limit was returned")
                precondition(!message.isCompressed || control & 0x40 != 0, "a compressed message was accepted")
                consumed += 5 + message.bytes.count
            }
            precondition(consumed + deframer.bufferedByteCount == offset, "bytes lost or invented")
        }
        try deframer.finish()
        precondition(deframer.bufferedByteCount == 0, "finish accepted a partial message")
    } catch {
        // A typed RPCError (INTERNAL or RESOURCE_EXHAUSTED) is the expected outcome for malformed input.
        precondition(error.code == .internal || error.code == .resourceExhausted, "unexpected code \(error.code)")
    }
    return 0
}
